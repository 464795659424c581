"""Options shared by the commands that read slides and detections (classify, batch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from wsi_atm.detections import CandidateOptions
from wsi_atm.slides import BACKENDS

F = Callable[..., Any]
MAX_BATCH = 16384  # crops per forward pass; 99999999999 was an allocation error mid-run


def _candidate_opts(image: bool) -> list[Callable[[F], F]]:
    opts: list[Callable[[F], F]] = [
        click.option("--min-score", type=float, default=None,
                     help="drop candidates whose detector score is below this"),
        click.option("--include-imposters", is_flag=True,
                     help="also classify imposters / sub-threshold 'non-mitotic figure' points"),
        click.option("--units", type=click.Choice(["mm", "um", "px"]), default=None,
                     help="units of the detection coordinates (default: the format's own)"),
        click.option("--merge-radius", type=float, default=3.0, show_default=True,
                     help="merge candidates closer than this many µm (0 disables)"),
    ]
    if image:
        opts.insert(3, click.option(
            "--image", default=None,
            help="image name or id inside a multi-slide file (default: the slide's name)"))
    return opts


def candidate_options(func: F) -> F:
    """--min-score, --include-imposters, --units, --image, --merge-radius."""
    for opt in reversed(_candidate_opts(image=True)):
        func = opt(func)
    return func


def batch_candidate_options(func: F) -> F:
    """As :func:`candidate_options`, without --image: in a batch each slide is matched to its
    entry of a multi-slide file by name."""
    for opt in reversed(_candidate_opts(image=False)):
        func = opt(func)
    return func


def make_candidate_options(
    min_score: float | None, include_imposters: bool, units: str | None,
    merge_radius: float, image: str | None = None,
) -> CandidateOptions:
    return CandidateOptions(
        min_score=min_score, include_imposters=include_imposters, units=units, image=image,
        merge_radius_um=merge_radius,
    )


def slide_options(func: F) -> F:
    """--mpp and --backend."""
    opts = [
        click.option("--mpp", type=float, default=None,
                     help="level-0 µm/px, overriding what the slide declares"),
        click.option("--backend", type=click.Choice(list(BACKENDS)),
                     default="auto", show_default=True,
                     help="slide reader: auto (OpenSlide or tiffslide, tiled TIFF levels "
                          "decoded directly), tiles (require the direct path), openslide or "
                          "tiffslide (that library only)"),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def model_options(func: F) -> F:
    """--model, --threshold, --device, --batch-size, --tta, --compile, --precision,
    --engine."""
    opts = [
        click.option("--model", default=None,
                     help="bundled model name or card path (default: the bundled default model)"),
        click.option("--threshold", type=click.FloatRange(0, 1), default=None,
                     help="decision threshold on P(atypical) (default: the card's)"),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda or cuda:N"),
        click.option("--batch-size", type=click.IntRange(min=1, max=MAX_BATCH), default=None,
                     help="crops per forward pass (default: the card's)"),
        click.option("--compile", "compile_model", is_flag=True,
                     help="torch.compile the models (CUDA; pays off on large batches)"),
        click.option("--tta", is_flag=True,
                     help="test-time augmentation: mean over the 8 flips/rotations"),
        click.option("--precision", type=click.Choice(["auto", "float32", "bf16"]),
                     default="auto", show_default=True,
                     help="what PyTorch computes in: auto (float32, the precision cards are "
                          "validated in, except bf16 autocast for ViT/foundation cards on a "
                          "GPU), float32, or bf16 (autocast, also on CPU; the summary records "
                          "it)"),
        click.option("--engine", type=click.Choice(["auto", "torch", "onnx"]), default="auto",
                     show_default=True, envvar="WSI_ATM_ENGINE",
                     help="what runs the networks on CPU: auto (ONNX Runtime when faster on a "
                          "probe batch and equal on the first real one), torch or onnx "
                          "[env WSI_ATM_ENGINE]"),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def engine_asked(engine: str) -> str | None:
    """``--engine`` when given on the command line, else None: ``WSI_ATM_ENGINE`` is then read
    by the classifier, which applies it to CPU machines only (a GPU keeps torch), so one
    environment serves a mixed cluster. Click's envvar had made it an explicit --engine onnx,
    which a GPU refuses."""
    source = click.get_current_context().get_parameter_source("engine")
    return engine if source == ParameterSource.COMMANDLINE else None


def call_options(func: F) -> F:
    """--hotspot-area, --review-band, --review-fold-std."""
    from wsi_atm.options import HOTSPOT_AREA_MM2, REVIEW_BAND, REVIEW_FOLD_STD

    opts = [
        click.option("--hotspot-area", type=float, default=HOTSPOT_AREA_MM2, show_default=True,
                     help="area in mm² of the mitotic hotspot: the circular field holding the "
                          "most mitoses (2 mm² ≈ 10 high-power fields)"),
        click.option("--review-band", type=float, default=REVIEW_BAND, show_default=True,
                     help="flag a call for review when |p_atypical - threshold| is at most this"),
        click.option("--review-fold-std", type=float, default=REVIEW_FOLD_STD,
                     show_default=True,
                     help="also flag it when the fold models' std of p reaches this "
                          "(models with several folds)"),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def output_options(func: F) -> F:
    """--shape, --review-class, --points-json."""
    opts = [
        click.option("--shape", type=click.Choice(["point", "circle"]), default="point",
                     show_default=True,
                     help="GeoJSON geometry: a point, or a 50-px circle polygon"),
        click.option("--review-class", is_flag=True,
                     help="give calls flagged for review their own QuPath class "
                          "('Mitosis to review')"),
        click.option("--points-json", is_flag=True,
                     help="also write NAME.points.json: the calls as grand-challenge points (mm)"),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def make_call_options(threshold: float | None, hotspot_area: float, review_band: float,
                      review_fold_std: float) -> Any:
    from wsi_atm.options import CallOptions

    return CallOptions(threshold=threshold, review_band=review_band,
                       review_fold_std=review_fold_std, hotspot_area_mm2=hotspot_area)


def make_output_options(shape: str, review_class: bool, points_json: bool) -> Any:
    from wsi_atm.options import OutputOptions

    return OutputOptions(shape=shape, review_class=review_class,  # type: ignore[arg-type]
                         points_json=points_json)
