"""``wsi-atm classify``: one slide + detections → GeoJSON, CSV, summary JSON, review PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from wsi_atm.cli.options import (
    call_options,
    candidate_options,
    engine_asked,
    make_call_options,
    make_candidate_options,
    make_output_options,
    model_options,
    output_options,
    slide_options,
)

if TYPE_CHECKING:
    from wsi_atm.classifiers import SlideClassifier
    from wsi_atm.slide_result import SlideResult


@click.command()
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("--detections", required=True, type=click.Path(path_type=Path),
              help="detector output: MIDOG JSON, grand-challenge points, SlideRunner, CSV, GeoJSON")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@model_options
@slide_options
@call_options
@output_options
@click.option("--quiet", is_flag=True, help="no progress bar")
@candidate_options
def classify(slide: Path, detections: Path, out_dir: Path, model: str | None,
             threshold: float | None, device: str, batch_size: int | None, tta: bool,
             compile_model: bool, precision: str, engine: str, mpp: float | None, backend: str,
             hotspot_area: float, review_band: float, review_fold_std: float, shape: str,
             review_class: bool, points_json: bool, quiet: bool, **cand: object) -> None:
    """Classify the candidate mitoses of SLIDE as atypical or normal."""
    from wsi_atm.engines import check_device, check_precision
    from wsi_atm.errors import OptionError
    from wsi_atm.files import printable, utf8_name
    from wsi_atm.heap import pin_mmap_threshold
    from wsi_atm.models.registry import find_card
    from wsi_atm.options import OpenOptions, check_out_dir
    from wsi_atm.outputs.paths import file_ids, output_paths, output_problems
    from wsi_atm.pipeline import prepare_slide, run_prepared

    pin_mmap_threshold()  # the tile cache's churn must not grow the heap (see heap.py)

    check_device(device)
    if device.startswith("cuda"):  # a GPU named: whether it is there is said before the slide
        from wsi_atm.infer import pick_device  # is read (torch is needed for it anyway)

        pick_device(device)
    asked = engine_asked(engine)
    if asked:  # from the environment it may not apply here (a GPU): the classifier decides
        check_precision(precision, asked)
    check_out_dir(out_dir)
    for path in (slide, detections, out_dir):
        if not utf8_name(path):  # the outputs (UTF-8 JSON, CSV, GeoJSON) could not name it
            raise OptionError(f"{printable(path)}: the name is not valid UTF-8; rename it")
    problems = output_problems(slide.name, out_dir, file_ids([slide, detections]))
    if problems:
        raise OptionError(problems[0])
    cand_options = make_candidate_options(**cand)  # type: ignore[arg-type]
    calls = make_call_options(threshold, hotspot_area, review_band, review_fold_std)
    outputs = make_output_options(shape, review_class, points_json)
    card = find_card(model)
    # Slide and detections first: bad input fails in a fraction of a second, before torch.
    prep = prepare_slide(slide, detections, card, cand_options, OpenOptions(backend, mpp))

    def make_classifier() -> SlideClassifier:
        from wsi_atm.classifiers import load_classifier

        return load_classifier(card, device=device, batch_size=batch_size, tta=tta,
                               compile=compile_model, engine=asked, precision=precision)

    result = run_prepared(prep, make_classifier, cand_options, calls, outputs,
                          out_dir=out_dir, quiet=quiet)
    n_aty, n_norm = int(result.atypical.sum()), int(result.normal.sum())
    skipped = len(result.candidates) - n_aty - n_norm
    ratio = f"{n_aty / n_norm:.3f}" if n_norm else "n/a (no normal mitoses)"
    frac = "n/a"
    if n_aty + n_norm:  # with its interval: under --tta it is the only share shown
        from wsi_atm.fraction.stats import wilson_interval

        low, high = wilson_interval(n_aty, n_aty + n_norm) or (0.0, 1.0)
        frac = f"{n_aty / (n_aty + n_norm):.1%} [{low:.1%}, {high:.1%}]"
    click.echo(
        f"{result.slide.name}: {len(result.candidates)} candidates, {n_aty} atypical, "
        f"{n_norm} normal, {skipped} skipped; atypical fraction {frac}, "
        f"atypical:normal {ratio}{_headline(result)}{_hotspot(result)} → "
        f"{output_paths(result.slide.name, out_dir)['summary']}"
    )


def _headline(result: SlideResult) -> str:
    """The estimated true share with its interval, as the console shows it."""
    from wsi_atm.outputs.summary import chance_reason, corrected_estimate

    est = corrected_estimate(result)
    if est is None or est.value is None or est.ci95 is None:
        return ("; no estimated true share: the card's calls are no better than chance (see "
                "the summary's warnings)") if chance_reason(result) else ""
    text = f"; estimated true atypical share {est.value:.1%} [{est.ci95[0]:.1%}, {est.ci95[1]:.1%}]"
    return text + (" (flagged: it may not hold on this slide, see the summary's warning)"
                   if est.warning else "")


def _hotspot(result: SlideResult) -> str:
    h = result.hotspot
    if h is None:
        return ""
    flagged = int(result.review.sum())
    count = str(h.mitoses) if h.exact else (
        f"{h.mitoses} (no field holds more than {h.mitoses_bound}: mitoses spread evenly)")
    return (f"; hotspot ({h.area_mm2:g} mm²) {count} mitoses, {h.atypical} atypical; "
            f"{flagged} call{'' if flagged == 1 else 's'} flagged for review")
