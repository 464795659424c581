"""``wsi-atm batch``: many slides, resumable, failure-isolated, locally or on dask.distributed.

Plan → jobs (slide, detections, mpp). Each job runs the same per-slide function as ``classify``
(:func:`wsi_atm.pipeline.run_slide`). A job is skipped on rerun only when its completion record
``OUT/.wsi-atm/<stem>.done.json`` (written after all four outputs) matches the slide (path, size,
mtime), the detections' sha256, the model's weight sha256s and the options. Outputs are atomic,
so a run killed at any moment leaves no partial file and resumes where it stopped.

With dask, workers classify (each holds one Classifier, loaded once per worker process) and
send the SlideResult back; the client writes every output, so results are the same as a
single-process run.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wsi_atm.cards import ModelCard, sha256_file
from wsi_atm.detections import CandidateOptions
from wsi_atm.errors import BadInputError, WsiAtmError
from wsi_atm.infer import Classifier
from wsi_atm.outputs.atomic import atomic_write_text
from wsi_atm.pipeline import SlideOptions, output_paths, run_slide, write_outputs
from wsi_atm.progress import progress_bar
from wsi_atm.results import SlideResult

SLIDE_PATTERNS = ("*.svs", "*.tif", "*.tiff", "*.ndpi", "*.mrxs", "*.scn", "*.vms", "*.vmu",
                  "*.bif", "*.svslide", "*.dcm")
STATE_DIR = ".wsi-atm"


@dataclass(frozen=True)
class Job:
    slide: Path
    detections: Path | None
    mpp: float | None = None
    problem: str = ""  # set when the job cannot run (e.g. ambiguous detections)


@dataclass
class Outcome:
    job: Job
    status: str  # ok | skipped | failed | no_detections
    error: str = ""
    elapsed_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchSettings:
    model: ModelCard
    candidate_options: CandidateOptions
    slide_options: SlideOptions
    device: str = "auto"
    batch_size: int | None = None
    tta: bool = False


# ------------------------------------------------------------------------------------ planning
def read_manifest(path: Path) -> list[Job]:
    """Manifest rows ``slide,detections[,mpp]``; every bad row is listed before any work."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            columns = set(rows[0]) if rows else set()
    except OSError as exc:
        raise BadInputError(f"cannot read manifest {path}: {exc}") from None
    if not rows or not {"slide", "detections"} <= columns:
        raise BadInputError(f"{path}: a manifest needs the columns slide,detections[,mpp]")
    base, jobs, bad = path.parent, [], []
    for i, row in enumerate(rows, start=2):
        problems, mpp = [], None
        slide = base / (row.get("slide") or "").strip()
        det_text = (row.get("detections") or "").strip()
        det = base / det_text if det_text else None
        if not row.get("slide") or not slide.is_file():
            problems.append(f"slide not found: {row.get('slide')!r}")
        if det is not None and not det.is_file():
            problems.append(f"detections not found: {det_text!r}")
        if (row.get("mpp") or "").strip():
            try:
                mpp = float(row["mpp"])
                if not mpp > 0:
                    raise ValueError
            except ValueError:
                problems.append(f"mpp is not a positive number: {row['mpp']!r}")
        if problems:
            bad.append(f"line {i}: " + "; ".join(problems))
        jobs.append(Job(slide, det, mpp))
    if bad:
        raise BadInputError(f"{path}: {len(bad)} bad row(s), nothing was started:\n  "
                            + "\n  ".join(bad))
    return jobs


def find_slides(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        raise BadInputError(f"slide folder not found: {folder}")
    found = {p for pat in patterns for p in folder.glob(pat) if p.is_file()}
    return sorted(found)


def pair_detections(slide: Path, det_dir: Path) -> Job:
    """Detections for ``slide`` in ``det_dir``: files named ``<stem>.<anything>``."""
    stem = slide.stem
    matches = sorted(p for p in det_dir.iterdir()
                     if p.is_file() and p != slide and p.name.startswith(stem + ".")
                     and not p.name.endswith((".png", ".summary.json")))
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        return Job(slide, None, problem=f"several detection files match: {names}")
    return Job(slide, matches[0] if matches else None)


def plan_jobs(slide_dir: Path | None, manifest: Path | None, detections: Path | None,
              detections_dir: Path | None, patterns: tuple[str, ...]) -> list[Job]:
    if manifest is not None:
        return read_manifest(manifest)
    if slide_dir is None:
        raise BadInputError("give a slide folder or --manifest")
    slides = find_slides(slide_dir, patterns)
    if detections is not None:
        if not detections.is_file():
            raise BadInputError(f"detections file not found: {detections}")
        return [Job(s, detections) for s in slides]
    det_dir = detections_dir or slide_dir
    if not det_dir.is_dir():
        raise BadInputError(f"detections folder not found: {det_dir}")
    return [pair_detections(s, det_dir) for s in slides]


# ----------------------------------------------------------------------------- resumability
def job_key(job: Job, settings: BatchSettings, weights: tuple[str, ...]) -> dict[str, Any]:
    st = job.slide.stat()
    return {
        "slide": str(job.slide.resolve()), "slide_size": st.st_size,
        "slide_mtime_ns": st.st_mtime_ns,
        "detections_sha256": sha256_file(job.detections) if job.detections else "",
        "model": settings.model.name, "weights_sha256": list(weights),
        "candidate_options": asdict(settings.candidate_options),
        "threshold": settings.slide_options.threshold, "mpp": job.mpp,
        "backend": settings.slide_options.backend, "shape": settings.slide_options.shape,
        "tta": settings.tta,
    }


def record_path(out_dir: Path, job: Job) -> Path:
    return out_dir / STATE_DIR / f"{job.slide.stem}.done.json"


def is_done(out_dir: Path, job: Job, key: dict[str, Any]) -> bool:
    record = record_path(out_dir, job)
    if not record.is_file():
        return False
    try:
        saved = json.loads(record.read_text())
    except ValueError:
        return False
    outputs = output_paths(job.slide.name, out_dir).values()
    return saved == key and all(p.is_file() for p in outputs)


def mark_done(out_dir: Path, job: Job, key: dict[str, Any]) -> None:
    path = record_path(out_dir, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(key, indent=1))


# ------------------------------------------------------------------------------ running slides
_WORKER_CLASSIFIERS: dict[tuple, Classifier] = {}
_LOCK = threading.Lock()


def worker_classifier(settings: BatchSettings) -> Classifier:
    """One Classifier per process (and card/device), kept resident across slides."""
    key = (str(settings.model.path), settings.device, settings.batch_size, settings.tta)
    with _LOCK:
        if key not in _WORKER_CLASSIFIERS:
            _WORKER_CLASSIFIERS[key] = Classifier(
                settings.model, device=settings.device, batch_size=settings.batch_size,
                tta=settings.tta)
        return _WORKER_CLASSIFIERS[key]


def classify_job(job: Job, settings: BatchSettings) -> SlideResult:
    """The worker side: classify one slide without writing anything."""
    options = SlideOptions(**{**asdict(settings.slide_options), "mpp": job.mpp, "quiet": True})
    return run_slide(job.slide, job.detections, worker_classifier(settings),
                     settings.candidate_options, options, out_dir=None)


def write_job(result: SlideResult, job: Job, settings: BatchSettings, out_dir: Path) -> None:
    """The client side: all outputs of one slide (reopening it for the picture)."""
    from wsi_atm.crops import plan_crops
    from wsi_atm.slides import open_slide

    opts = settings.slide_options
    with open_slide(job.slide, backend=opts.backend, mpp=job.mpp) as slide:
        card = settings.model
        plan = plan_crops(slide, size=card.crop_size, target_mpp=card.mpp)
        write_outputs(slide, plan, result, out_dir, opts)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, WsiAtmError) else f"{type(exc).__name__}: {text}"


def _prewarm(job: Job) -> None:
    """Touch the next slide's files so reading them overlaps the current slide's work."""
    for path in (job.slide, job.detections):
        if path is not None:
            try:
                with open(path, "rb") as fh:
                    fh.read(1 << 20)
            except OSError:
                pass


def run_local(jobs: list[Job], settings: BatchSettings, out_dir: Path) -> Iterator[Outcome]:
    for i, job in enumerate(jobs):
        if i + 1 < len(jobs):
            threading.Thread(target=_prewarm, args=(jobs[i + 1],), daemon=True).start()
        t0 = time.perf_counter()
        try:
            result = classify_job(job, settings)
            write_job(result, job, settings, out_dir)
        except Exception as exc:  # failure isolation: record and go on
            yield Outcome(job, "failed", _one_line(exc), time.perf_counter() - t0)
            continue
        yield Outcome(job, "ok", elapsed_s=time.perf_counter() - t0)


def run_dask(jobs: list[Job], settings: BatchSettings, out_dir: Path, scheduler: str | None,
             workers: int | None) -> Iterator[Outcome]:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
    client = Client(scheduler or cluster)
    try:
        futures = {client.submit(classify_job, job, settings, pure=False): job for job in jobs}
        started = {f: time.perf_counter() for f in futures}
        for future in as_completed(futures):
            job = futures[future]
            try:
                result = future.result()
                write_job(result, job, settings, out_dir)
            except Exception as exc:
                yield Outcome(job, "failed", _one_line(exc), time.perf_counter() - started[future])
                continue
            yield Outcome(job, "ok", elapsed_s=result.elapsed_s)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------------- the batch
def run_batch(jobs: list[Job], settings: BatchSettings, out_dir: Path, scheduler: str | None = None,
              workers: int | None = None, quiet: bool = False) -> list[Outcome]:
    out_dir.mkdir(parents=True, exist_ok=True)
    from wsi_atm.infer import verify_weights

    weights = tuple(w.sha256 for w in verify_weights(settings.model))
    outcomes: dict[Path, Outcome] = {}
    pending, keys = [], {}
    for job in jobs:
        if job.problem:
            outcomes[job.slide] = Outcome(job, "failed", job.problem)
        elif job.detections is None:
            outcomes[job.slide] = Outcome(job, "no_detections", "no detection file for this slide")
        else:
            keys[job.slide] = job_key(job, settings, weights)
            if is_done(out_dir, job, keys[job.slide]):
                outcomes[job.slide] = Outcome(job, "skipped")
            else:
                pending.append(job)
    bar = progress_bar(len(pending), "slides", quiet=quiet, unit="slide")
    runner = (run_dask(pending, settings, out_dir, scheduler, workers)
              if scheduler or workers else run_local(pending, settings, out_dir))
    for outcome in runner:
        if outcome.status == "ok":
            mark_done(out_dir, outcome.job, keys[outcome.job.slide])
        outcomes[outcome.job.slide] = outcome
        bar.update(1)
    bar.close()
    ordered = [outcomes[j.slide] for j in jobs]
    for o in ordered:
        summary = output_paths(o.job.slide.name, out_dir)["summary"]
        if o.status in ("ok", "skipped") and summary.is_file():
            o.summary = json.loads(summary.read_text())
    from wsi_atm.cohort import write_cohort

    write_cohort(ordered, out_dir)
    return ordered
