"""Completion records: a slide is skipped on rerun only when its record matches exactly."""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

from wsi_atm.batch.plan import BatchSettings, Job
from wsi_atm.errors import BadInputError, ModelError
from wsi_atm.infer import verify_weights
from wsi_atm.models.card import ModelCard
from wsi_atm.models.weight_files import sha256_file
from wsi_atm.outputs.atomic import remove_temps
from wsi_atm.pipeline import output_paths

STATE_DIR = ".wsi-atm"


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process."""
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def model_fingerprint(card: ModelCard) -> dict[str, Any]:
    """The card's and weights' sha256s, without loading (stated sha256s are checked at load)."""
    if card.status == "untrained" or not card.weights:
        verify_weights(card)  # raises the untrained-model error
    missing = [str(p) for p in card.weight_paths() if not p.is_file()]
    if missing:
        raise ModelError(f"model {card.name!r}: weight file missing: {', '.join(missing)}")
    weights = [w.sha256 or file_sha256(card.resolve(w.file)) for w in card.weights]
    return {"model": card.name, "card_sha256": file_sha256(card.path), "weights_sha256": weights}


def completion_key(job: Job, settings: BatchSettings, model: dict[str, Any]) -> dict[str, Any]:
    """Everything a slide's outputs depend on (timings and machine aside)."""
    assert job.detections is not None
    st, opts = job.slide.stat(), settings.slide_options
    threshold = settings.model.threshold if opts.threshold is None else opts.threshold
    return {
        "slide": str(job.slide.resolve()), "slide_size": st.st_size,
        "slide_mtime_ns": st.st_mtime_ns, "detections": str(job.detections.resolve()),
        "detections_sha256": file_sha256(job.detections), **model, "threshold": threshold,
        "candidate_options": asdict(settings.candidate_options), "mpp": job.mpp,
        "backend": opts.backend, "shape": opts.shape, "figure": opts.figure, "tta": settings.tta,
    }


def record_path(out_dir: Path, job: Job) -> Path:
    return out_dir / STATE_DIR / f"{PurePath(job.slide.name).stem}.done.json"


def is_up_to_date(out_dir: Path, job: Job, key: dict[str, Any]) -> bool:
    """Whether the slide's record matches ``key`` and all its outputs are there."""
    try:
        saved = json.loads(record_path(out_dir, job).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    outputs = output_paths(job.slide.name, out_dir)
    if not key.get("figure", True):
        outputs.pop("png")
    return saved == key and all(p.is_file() for p in outputs.values())


def remove_leftovers(out_dir: Path, job: Job) -> None:
    """The completion record and temp files a killed run may have left, before rewriting."""
    record = record_path(out_dir, job)
    record.unlink(missing_ok=True)
    for p in [*output_paths(job.slide.name, out_dir).values(), record]:
        remove_temps(p)


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """One batch per output folder at a time (the lock dies with the process)."""
    (out_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with open(out_dir / STATE_DIR / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BadInputError(f"another wsi-atm batch is writing to {out_dir}") from None
        yield

