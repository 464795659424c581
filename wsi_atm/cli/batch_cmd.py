"""``wsi-atm batch``: classify many slides; resumable, failure-isolated, local or dask."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wsi_atm.cli.options import (
    candidate_options,
    make_candidate_options,
    model_options,
    slide_options,
)


@click.command()
@click.argument("slide_dir", required=False, type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="CSV with columns slide,detections[,mpp] (paths relative to the manifest)")
@click.option("--out-dir", type=click.Path(path_type=Path), required=True)
@click.option("--detections", type=click.Path(path_type=Path), default=None,
              help="one detection file for every slide (e.g. MIDOG++ JSON, SlideRunner db)")
@click.option("--detections-dir", type=click.Path(path_type=Path), default=None,
              help="folder of per-slide detection files named <slide stem>.* (default: "
                   "SLIDE_DIR)")
@click.option("--pattern", "patterns", multiple=True,
              help="slide file glob(s) in SLIDE_DIR (default: common WSI extensions)")
@click.option("--scheduler", default=None, help="dask.distributed scheduler, tcp://host:8786")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="start a local dask cluster of N worker processes")
@model_options
@slide_options
@click.option("--shape", type=click.Choice(["point", "circle"]), default="point")
@click.option("--quiet", is_flag=True)
@candidate_options
def batch(slide_dir: Path | None, manifest: Path | None, out_dir: Path,
          detections: Path | None, detections_dir: Path | None, patterns: tuple[str, ...],
          scheduler: str | None, workers: int | None, model: str | None,
          threshold: float | None, device: str, batch_size: int | None, tta: bool,
          mpp: float | None, backend: str, shape: str, quiet: bool, **cand: object) -> None:
    """Classify every slide of SLIDE_DIR (or of --manifest) into --out-dir."""
    from wsi_atm.batch import SLIDE_PATTERNS, BatchSettings, plan_jobs, run_batch
    from wsi_atm.cards import find_card
    from wsi_atm.pipeline import SlideOptions

    jobs = plan_jobs(slide_dir, manifest, detections, detections_dir,
                     patterns or SLIDE_PATTERNS)
    if mpp is not None:
        jobs = [j if j.mpp is not None else type(j)(j.slide, j.detections, mpp, j.problem)
                for j in jobs]
    settings = BatchSettings(
        model=find_card(model), candidate_options=make_candidate_options(**cand),  # type: ignore[arg-type]
        slide_options=SlideOptions(backend=backend, threshold=threshold, shape=shape, quiet=True),
        device=device, batch_size=batch_size, tta=tta)
    outcomes = run_batch(jobs, settings, out_dir, scheduler=scheduler, workers=workers,
                         quiet=quiet)
    for o in outcomes:
        if o.status in ("failed", "no_detections"):
            click.echo(f"wsi-atm: {o.status}: {o.job.slide.name}: {o.error}", err=True)
    n = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed",
                                                          "no_detections")}
    click.echo(f"{len(outcomes)} slides: {n['ok']} succeeded, {n['skipped']} skipped (up to "
               f"date), {n['failed']} failed, {n['no_detections']} without detections → "
               f"{out_dir / 'cohort.csv'}")
    if n["failed"]:
        sys.exit(1)
