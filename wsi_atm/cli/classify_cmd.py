"""``wsi-atm classify``: one slide + detections → GeoJSON, CSV, summary JSON, review PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from wsi_atm.cli.options import (
    candidate_options,
    make_candidate_options,
    model_options,
    slide_options,
)

if TYPE_CHECKING:
    from wsi_atm.slide_result import SlideResult


@click.command()
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("--detections", required=True, type=click.Path(path_type=Path),
              help="detector output: MIDOG JSON, grand-challenge points, SlideRunner, CSV, GeoJSON")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@model_options
@slide_options
@click.option("--shape", type=click.Choice(["point", "circle"]), default="point",
              show_default=True, help="GeoJSON geometry: a point, or a 50-px circle polygon")
@click.option("--quiet", is_flag=True, help="no progress bar")
@candidate_options
def classify(slide: Path, detections: Path, out_dir: Path, model: str | None,
             threshold: float | None, device: str, batch_size: int | None, tta: bool,
             compile_model: bool,
             mpp: float | None, backend: str, shape: str, quiet: bool, **cand: object) -> None:
    """Classify the candidate mitoses of SLIDE as atypical or normal."""
    from wsi_atm.infer import Classifier, set_cpu_threads
    from wsi_atm.models.registry import find_card
    from wsi_atm.outputs.geojson import Shape
    from wsi_atm.pipeline import SlideOptions, output_paths, run_slide

    cand_options = make_candidate_options(**cand)  # type: ignore[arg-type]
    set_cpu_threads()
    classifier = Classifier(find_card(model), device=device, batch_size=batch_size, tta=tta,
                            compile=compile_model)
    options = SlideOptions(backend=backend, mpp=mpp, threshold=threshold, shape=cast(Shape, shape),
                           quiet=quiet)
    result = run_slide(slide, detections, classifier, cand_options, options, out_dir=out_dir)
    n_aty, n_norm = int(result.atypical.sum()), int(result.normal.sum())
    skipped = len(result.candidates) - n_aty - n_norm
    ratio = f"{n_aty / n_norm:.3f}" if n_norm else "n/a (no normal mitoses)"
    frac = f"{n_aty / (n_aty + n_norm):.1%}" if n_aty + n_norm else "n/a"
    click.echo(
        f"{result.slide.name}: {len(result.candidates)} candidates, {n_aty} atypical, "
        f"{n_norm} normal, {skipped} skipped; atypical fraction {frac}, "
        f"atypical:normal {ratio}{_headline(result)} → "
        f"{output_paths(result.slide.name, out_dir)['summary']}"
    )


def _headline(result: SlideResult) -> str:
    """The estimated true share with its interval, as the console shows it."""
    from wsi_atm.outputs.summary import corrected_estimate

    est = corrected_estimate(result)
    if est is None or est.value is None or est.ci95 is None:
        return ""
    text = f"; estimated true atypical share {est.value:.1%} [{est.ci95[0]:.1%}, {est.ci95[1]:.1%}]"
    return text + (" (card's rates contradicted: see summary warning)" if est.warning else "")
