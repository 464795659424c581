"""Running jobs: one process with the next slide prepared ahead, or dask workers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from wsi_atm import pipeline
from wsi_atm.batch.plan import (
    COHORT_FILES,
    BatchSettings,
    Job,
    Outcome,
    SlideStatus,
    job_options,
)
from wsi_atm.batch.resume import (
    completion_key,
    engine_key,
    exclusive,
    model_fingerprint,
    record_path,
    record_text,
    remove_leftovers,
    why_rerun,
)
from wsi_atm.classifiers import SlideClassifier
from wsi_atm.classifiers import load_classifier as _load
from wsi_atm.console import LOCAL_WORKER_ENV, say, setup_console
from wsi_atm.cpus import CPUS_ENV, usable_cpus
from wsi_atm.errors import BadInputError, CohortError, WsiAtmError
from wsi_atm.files import atomic_write_text, file_sha256, remove_temps
from wsi_atm.heap import pin_mmap_threshold
from wsi_atm.options import OpenOptions
from wsi_atm.outputs.paths import output_paths, retire_outputs
from wsi_atm.outputs.write import write_outputs
from wsi_atm.pipeline import PreparedSlide, prepare_slide
from wsi_atm.progress import progress_bar
from wsi_atm.signals import group_signals_spared
from wsi_atm.slide_result import SlideResult


@dataclass
class Prepared(PreparedSlide):
    """A prepared slide (see :func:`wsi_atm.pipeline.prepare_slide`) and the job it is for."""

    job: Job | None = None


def prepare(job: Job, settings: BatchSettings) -> Prepared:
    assert job.detections is not None
    opening = OpenOptions(backend=settings.opening.backend, mpp=job.mpp,
                          mpp_origin=job.mpp_origin)
    prep = prepare_slide(job.slide, job.detections, settings.model, job_options(job, settings),
                         opening)
    return Prepared(**{f.name: getattr(prep, f.name) for f in fields(prep)}, job=job)


def classify_job(prep: Prepared, classifier: SlideClassifier,
                      settings: BatchSettings) -> SlideResult:
    options = job_options(prep.job, settings) if prep.job else settings.candidate_options
    return pipeline.classify_prepared(prep, classifier, options, settings.calls,
                                      figure=settings.outputs.figure)


def load_classifier(settings: BatchSettings) -> SlideClassifier:
    pin_mmap_threshold()  # this process's heap (a dask worker runs no CLI entry point)
    if os.environ.get(LOCAL_WORKER_ENV):  # a local worker of ours: one line per warning
        setup_console()
    # settings.threads: this process's share of the cores, for its crop threads too
    if settings.threads:
        os.environ[CPUS_ENV] = str(settings.threads)
    return _load(settings.model, device=settings.device, batch_size=settings.batch_size,
                 tta=settings.tta, compile=settings.compile, engine=settings.engine,
                 threads=settings.threads, precision=settings.precision)


_RESIDENT: dict[str, Any] = {"key": None, "classifier": None, "loads": 0}
_RESIDENT_LOCK = threading.Lock()


def resident_classifier(settings: BatchSettings) -> SlideClassifier:
    """This process's SlideClassifier, loaded on first use and kept across slides (dask workers)."""
    card = settings.model
    key = (str(card.path), file_sha256(card.path), settings.device, settings.batch_size,
           settings.tta, settings.threads, settings.compile, settings.engine, settings.precision)
    with _RESIDENT_LOCK:
        if _RESIDENT["key"] != key:
            _RESIDENT.update(key=None, classifier=None)  # one model resident at a time
            _RESIDENT.update(key=key, classifier=load_classifier(settings))
            _RESIDENT["loads"] += 1
        classifier: SlideClassifier = _RESIDENT["classifier"]
        return classifier


def classify_on_worker(job: Job, settings: BatchSettings) -> SlideResult:
    """A dask task: classify one slide and render its review picture, write nothing, send the
    result back (the client writes it without opening the slide)."""
    prep = prepare(job, settings)
    try:
        return classify_job(prep, resident_classifier(settings), settings)
    finally:
        prep.close()


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, WsiAtmError) else f"{type(exc).__name__}: {text}"


# ------------------------------------------------------------------------------ runners
Write = Callable[[SlideResult, Job], None]
Begin = Callable[[Job], None]  # a slide's work starts: its earlier outputs stop vouching


def run_local(jobs: list[Job], settings: BatchSettings, write: Write,
              begin: Begin = lambda job: None) -> Iterator[Outcome]:
    """One process, model resident; slide i+1 is prepared in a thread while slide i runs."""
    if not jobs:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsi-atm-prepare")
    ahead: Future[Prepared] | None = pool.submit(prepare, jobs[0], settings)
    try:
        classifier = load_classifier(settings)  # while the first slide is being opened
        for i, job in enumerate(jobs):
            current, ahead = ahead, (pool.submit(prepare, jobs[i + 1], settings)
                                     if i + 1 < len(jobs) else None)
            assert current is not None
            yield _finish_local(current, job, classifier, settings, write, begin)
    finally:
        if ahead is not None and not ahead.cancel():
            with contextlib.suppress(Exception):
                ahead.result().close()
        pool.shutdown(wait=True)


def _finish_local(future: Future[Prepared], job: Job, classifier: SlideClassifier,
                  settings: BatchSettings, write: Write, begin: Begin) -> Outcome:
    t0 = time.perf_counter()
    try:
        prep = future.result()
    except Exception as exc:  # failure isolation: record and go on
        elapsed = round(time.perf_counter() - t0, 3)
        # Regression: a slide that failed to open kept its earlier run's summary and
        # completion record here (on dask they went): a stale result beside a failed row
        try:
            begin(job)
        except Exception as cleanup:
            return Outcome(job, SlideStatus.FAILED, f"{one_line(exc)}; {one_line(cleanup)}",
                           elapsed)
        return Outcome(job, SlideStatus.FAILED, one_line(exc), elapsed)
    prep.start_now()
    try:
        begin(job)
        result = classify_job(prep, classifier, settings)
    except Exception as exc:
        elapsed = round(time.perf_counter() - prep.started, 3)
        return Outcome(job, SlideStatus.FAILED, one_line(exc), elapsed)
    finally:
        prep.close()  # the result holds all the outputs need
    try:
        write(result, job)
    except Exception as exc:
        elapsed = round(time.perf_counter() - prep.started, 3)
        return Outcome(job, SlideStatus.FAILED, one_line(exc), elapsed)
    return Outcome(job, SlideStatus.OK, elapsed_s=round(time.perf_counter() - prep.started, 3))


def _connect(scheduler: str | None, workers: int | None) -> tuple[Any, Any]:
    from dask.distributed import Client, LocalCluster

    setup_console()  # importing distributed set its loggers to INFO: two dozen lines a batch

    if scheduler is None:
        os.environ[LOCAL_WORKER_ENV] = "1"  # the workers inherit it (see console.py)
        cluster = None
        try:
            # also its event loop's thread, which (re)starts the workers
            with group_signals_spared():
                cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1,
                                       processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=logging.WARNING,
                                       preload=["wsi_atm.batch.worker_setup"])
            return Client(cluster), cluster
        except BaseException:  # a signal held over the start lands here: close what started
            if cluster is not None:
                cluster.close()
            raise
    try:
        return Client(scheduler, timeout="30s"), None
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: not an address
        raise BadInputError(f"cannot reach the dask scheduler {scheduler}: {exc}") from None


def run_dask(jobs: list[Job], settings: BatchSettings, write: Write, scheduler: str | None,
             workers: int | None, begin: Begin = lambda job: None) -> Iterator[Outcome]:
    """Workers classify (model resident per worker process); this process writes outputs."""
    from dask.distributed import as_completed

    if not jobs:
        return
    client, cluster = _connect(scheduler, workers)
    try:
        _preload(client, settings)
        futures = {client.submit(classify_on_worker, job, settings, pure=False): job
                   for job in jobs}
        for future in as_completed(futures):
            job = futures.pop(future)
            yield _finish_remote(future, job, settings, write, begin)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _load_resident(settings: BatchSettings) -> None:
    resident_classifier(settings)


def _preload(client: Any, settings: BatchSettings) -> None:
    """Load the model on every connected worker first: a model that cannot load stops the
    batch before any slide (workers that join later load it with their first slide).
    Regression: each load was pinned to its worker, so a worker killed while loading (the OOM
    killer) left its task waiting for an address that never came back, and the batch hung."""
    workers = list(client.scheduler_info().get("workers", {}))
    client.gather([client.submit(_load_resident, settings, workers=[w], pure=False,
                                 allow_other_workers=True) for w in workers])


def _finish_remote(future: Any, job: Job, settings: BatchSettings, write: Write,
                   begin: Begin) -> Outcome:
    """A worker's result written here; the slide's earlier outputs are retired only now that
    its result (or failure) is back, so a batch stopped early leaves the others' alone."""
    t0 = time.perf_counter()
    try:
        begin(job)
        result: SlideResult = future.result()
        write(result, job)
    except Exception as exc:
        elapsed = round(time.perf_counter() - t0, 3)
        return Outcome(job, SlideStatus.FAILED, one_line(exc), elapsed)
    elapsed = round(result.elapsed_s + time.perf_counter() - t0, 3)
    return Outcome(job, SlideStatus.OK, elapsed_s=elapsed)


# --------------------------------------------------------------------------------- the batch
Keys = dict[Path, dict[str, Any]]


def _triage(jobs: list[Job], settings: BatchSettings, out_dir: Path, model: dict[str, Any],
            quiet: bool = False) -> tuple[dict[Path, Outcome], list[Job], Keys]:
    outcomes: dict[Path, Outcome] = {}
    pending, keys = [], {}
    for job in jobs:
        if job.status:
            outcomes[job.slide] = Outcome(job, job.status, job.note)
            continue
        try:
            keys[job.slide] = completion_key(job, settings, model)
        except OSError as exc:
            outcomes[job.slide] = Outcome(job, SlideStatus.FAILED, one_line(exc))
            continue
        reason = why_rerun(out_dir, job, keys[job.slide])
        if reason is None:
            outcomes[job.slide] = Outcome(job, SlideStatus.SKIPPED)
            continue
        if reason:  # --quiet is for the progress bar; why a slide runs again is always said
            say(f"wsi-atm: re-running {job.slide.name}: {reason}")
        pending.append(job)
    return outcomes, pending, keys


def run_batch(jobs: list[Job], settings: BatchSettings, out_dir: Path, scheduler: str | None = None,
              workers: int | None = None, quiet: bool = False) -> list[Outcome]:
    """Classify every job not up to date, then write ``cohort.csv`` and ``cohort.png``."""
    from wsi_atm.batch.cohort import write_cohort

    distributed = bool(scheduler or workers)
    # --workers start processes on this machine: "auto" is resolved here, as for one process.
    # Regression: a rerun with --workers (or without, after one) re-ran every finished slide,
    # "changed since its last run: device" (auto against cpu), on the same machine
    engine = engine_key(settings, bool(scheduler))
    if not scheduler and settings.device == "auto":  # run on the device the records name
        settings = replace(settings, device=engine["device"])
    model = {**model_fingerprint(settings.model), **engine}
    with exclusive(out_dir):
        outcomes, pending, keys = _triage(jobs, settings, out_dir, model, quiet)

        def begin(job: Job) -> None:
            # only once the model and (locally) the slide are good: a batch stopped by bad
            # input or before reaching a slide leaves that slide's earlier outputs as they were
            remove_leftovers(out_dir, job)
            retire_outputs(job.slide.name, out_dir)
            # Regression: a batch stopped from here on left the last run's cohort files,
            # describing outputs that had changed since, looking current
            _drop_cohort(out_dir)

        def write(result: SlideResult, job: Job) -> None:
            remove_leftovers(out_dir, job)
            write_outputs(result, out_dir, settings.outputs)
            atomic_write_text(record_path(out_dir, job), record_text(out_dir, job, keys[job.slide]))

        runner = (run_dask(pending, settings, write, scheduler, workers, begin)
                  if distributed else run_local(pending, settings, write, begin))
        bar = progress_bar(len(pending), "slides", quiet=quiet, unit="slide")
        for outcome in runner:
            outcomes[outcome.job.slide] = outcome
            bar.update(1)
        bar.close()
        ordered = [outcomes[j.slide] for j in jobs]
        for o in ordered:
            if o.status in (SlideStatus.OK, SlideStatus.SKIPPED):
                o.summary = _read_summary(output_paths(o.job.slide.name, out_dir)["summary"])
        try:
            write_cohort(ordered, out_dir)
        except OSError as exc:  # Regression: a full disk here was an internal error, the
            _drop_cohort(out_dir)  # slides' outcomes unreported, cohort.csv without its report
            raise CohortError(f"{out_dir}: cannot write the cohort files "
                              f"({exc.strerror or exc}); every slide listed as succeeded has "
                              "its own outputs complete", list(ordered)) from exc
    return ordered


def _drop_cohort(out_dir: Path) -> None:
    for name in COHORT_FILES:
        (out_dir / name).unlink(missing_ok=True)
        remove_temps(out_dir / name)


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return summary
    except (OSError, ValueError):
        return {}


def local_threads(workers: int | None) -> int | None:
    """CPU threads per model so that ``workers`` local processes share the cores."""
    return max(1, usable_cpus() // workers) if workers else None
