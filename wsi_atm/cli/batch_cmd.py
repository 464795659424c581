"""``wsi-atm batch``: classify many slides; resumable, failure-isolated, local or dask."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from wsi_atm.cli.options import (
    batch_candidate_options,
    call_options,
    engine_asked,
    make_call_options,
    make_candidate_options,
    make_output_options,
    model_options,
    output_options,
    slide_options,
)
from wsi_atm.console import say
from wsi_atm.errors import CohortError

if TYPE_CHECKING:
    from wsi_atm.batch.plan import Outcome

# PROTOCOL://HOST:PORT or HOST:PORT (an IPv6 host in brackets), as dask takes them
SCHEDULER = re.compile(r"([a-z]+://)?(\[[0-9a-fA-F:.]+(%[\w.-]+)?\]|[^\s:/\[\]]+):[0-9]{1,5}")

EPILOG = """\b
Pairing without a manifest: the detections of NAME.<wsi extension> are the files NAME.* in
--detections-dir (default: beside the slide) whose format is recognised from their content;
none → status no_detections, several → that slide fails, listing them. A manifest is a CSV
with columns slide,detections[,mpp,image] (paths relative to the manifest's folder; image: the
entry of a multi-slide detections file, when the slide's name matches more than one).

\b
Resume: OUT/.wsi-atm/<stem>.done.json is written after a slide's outputs; a rerun skips a
slide only when it matches (slide path, size and mtime; detections sha256; model card and
weight sha256s, a hub card's base model snapshot; wsi-atm version and source sha256, device,
precision, engine, compile; threshold, review band, review fold std, hotspot area, candidate
options, mpp, backend, outputs asked for, tta) and its outputs are all there, each the file
that run wrote (sha256).

\b
Exit status: 0 when no slide failed, 1 when any did, 2 for bad input before any work
(e.g. a manifest with missing files: every bad row is listed).
"""


@click.command(epilog=EPILOG)
@click.argument("slide_dir", required=False, type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="CSV with columns slide,detections[,mpp,image] (paths relative to the "
                   "manifest)")
@click.option("--out-dir", type=click.Path(path_type=Path), required=True,
              help="per-slide outputs, cohort.csv, cohort.png and .wsi-atm/ completion records")
@click.option("--detections", type=click.Path(path_type=Path), default=None,
              help="one multi-slide detection file for every slide (MIDOG++ JSON, SlideRunner)")
@click.option("--detections-dir", type=click.Path(path_type=Path), default=None,
              help="folder of per-slide detection files NAME.* (default: beside each slide)")
@click.option("--pattern", "patterns", multiple=True,
              help="slide glob(s) in SLIDE_DIR, e.g. '*.svs' or '**/*.ndpi' (default: every "
                   "file with a WSI extension, any case)")
@click.option("--scheduler", default=None,
              help="send slides to this dask.distributed scheduler, e.g. tcp://host:8786")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="start a local dask cluster of N worker processes")
@model_options
@slide_options
@call_options
@output_options
@click.option("--quiet", is_flag=True, help="no progress bar")
@batch_candidate_options
def batch(slide_dir: Path | None, manifest: Path | None, out_dir: Path,
          detections: Path | None, detections_dir: Path | None, patterns: tuple[str, ...],
          scheduler: str | None, workers: int | None, model: str | None,
          threshold: float | None, device: str, batch_size: int | None, tta: bool,
          compile_model: bool, precision: str, engine: str, mpp: float | None, backend: str,
          hotspot_area: float, review_band: float, review_fold_std: float, shape: str,
          review_class: bool, points_json: bool, quiet: bool, **cand: object) -> None:
    """Classify every slide of SLIDE_DIR (or of --manifest) into --out-dir."""
    from wsi_atm.batch import BatchSettings, local_threads, plan_jobs, run_batch
    from wsi_atm.engines import check_device, check_precision
    from wsi_atm.errors import OptionError
    from wsi_atm.models.registry import find_card
    from wsi_atm.options import OpenOptions

    check_device(device)
    asked = engine_asked(engine)
    if asked:  # from the environment it may not apply on a GPU: the classifier decides
        check_precision(precision, asked)
    if scheduler and not SCHEDULER.fullmatch(scheduler):
        raise OptionError(f"--scheduler must be a dask scheduler's address such as "
                          f"tcp://host:8786, not {scheduler!r}")
    if scheduler and workers:
        raise OptionError("give --scheduler (an existing cluster) or --workers (a local one)")
    settings = BatchSettings(
        model=find_card(model), candidate_options=make_candidate_options(**cand),  # type: ignore[arg-type]
        opening=OpenOptions(backend=backend),
        calls=make_call_options(threshold, hotspot_area, review_band, review_fold_std),
        outputs=make_output_options(shape, review_class, points_json),
        device=device, batch_size=batch_size, tta=tta, compile=compile_model, engine=asked,
        precision=precision, threads=None if scheduler else local_threads(workers))
    jobs = plan_jobs(slide_dir, manifest, detections, detections_dir, out_dir, patterns, mpp)
    try:
        outcomes = run_batch(jobs, settings, out_dir, scheduler=scheduler, workers=workers,
                             quiet=quiet)
    except CohortError as exc:  # the slides' outcomes first, then the error line
        _report(cast("list[Outcome]", exc.outcomes), None)
        raise
    if _report(outcomes, out_dir / "cohort.csv"):
        sys.exit(1)


def _report(outcomes: list[Outcome], cohort: Path | None) -> int:
    """Print each failed slide and the tally; returns how many failed."""
    for o in outcomes:
        if o.status in ("failed", "no_detections"):
            say(f"wsi-atm: {o.status}: {o.job.slide}: {o.error}")
    n = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed",
                                                          "no_detections")}
    click.echo(f"{len(outcomes)} slides: {n['ok']} succeeded, {n['skipped']} skipped (up to "
               f"date), {n['failed']} failed, {n['no_detections']} without detections"
               + (f"; cohort: {cohort}" if cohort else ""))
    return n["failed"]
