"""Completion records: a slide is skipped on rerun only when its record matches exactly."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path, PurePath
from typing import Any

from wsi_atm import __version__
from wsi_atm.batch.plan import BatchSettings, Job, job_options
from wsi_atm.engines import DEVICE_NAMES, cuda_possible, precision_on
from wsi_atm.errors import BadInputError, ModelError
from wsi_atm.files import file_sha256, remove_temps
from wsi_atm.models.card import ModelCard, verify_weights
from wsi_atm.models.sources import cached_revision
from wsi_atm.options import OutputOptions
from wsi_atm.outputs.paths import output_paths, wanted_outputs

STATE_DIR = ".wsi-atm"


def model_fingerprint(card: ModelCard) -> dict[str, Any]:
    """The card's and weights' sha256s, without loading (stated sha256s are checked at load)."""
    if card.status == "untrained" or not card.weights:
        verify_weights(card)  # raises the untrained-model error
    missing = [str(p) for p in card.weight_paths() if not p.is_file()]
    if missing:
        raise ModelError(f"model {card.name!r}: weight file missing: {', '.join(missing)}")
    weights = [w.sha256 or file_sha256(card.resolve(w.file)) for w in card.weights]
    found = {"model": card.name, "card_sha256": file_sha256(card.path), "weights_sha256": weights}
    if card.is_hub:  # the weights hold adapters or a head; the backbone is the cached snapshot
        found["base_model"] = card.architecture
        found["base_revision"] = card.hub_revision or cached_revision(card.architecture)
    return found


def engine_key(settings: BatchSettings, distributed: bool) -> dict[str, Any]:
    """The package version and the device/precision the networks run at.

    Locally the device is resolved here (``auto`` → cuda or cpu). On a dask cluster each
    worker resolves ``auto`` itself, so the key holds what was asked for: pass ``--device``
    explicitly on mixed clusters to have resume tell a GPU result from a CPU one.
    """
    kind = settings.model.kind
    if distributed and settings.device == "auto":
        device = "auto"
        on_gpu, on_cpu = (precision_on(d, kind, settings.precision) for d in ("cuda", "cpu"))
        precision = on_cpu if on_gpu == on_cpu else f"{on_gpu} on cuda, {on_cpu} on cpu"
    else:  # an explicit device means the same on every machine; auto resolves here
        device = device_type(settings.device, distributed)
        precision = precision_on(device, kind, settings.precision)
    return {"wsi_atm_version": __version__, "code_sha256": code_sha256(), "device": device,
            "precision": precision, "compile": settings.compile,
            "engine": settings.engine or os.environ.get("WSI_ATM_ENGINE") or "auto"}


@functools.cache
def code_sha256() -> str:
    """The sha256 of wsi-atm's own source: the version number alone never changed between
    commits, so upgrading a checkout re-ran nothing whatever the new code computes."""
    return tree_sha256(Path(__file__).resolve().parent.parent)


def tree_sha256(root: Path) -> str:
    """One sha256 over the names and contents of the ``.py`` files under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def device_type(name: str, distributed: bool) -> str:
    """``cpu`` or ``cuda`` for ``--device name``. Torch (seconds to import) is asked only where
    a GPU could be meant here: a batch whose networks run torch-free never imports it."""
    if name == "cpu" or (name == "auto" and not cuda_possible()):
        return "cpu"
    if distributed and _is_device(name):  # resolved on the workers, not on this machine
        return "cuda" if name.startswith("cuda") else "cpu"
    from wsi_atm.infer import pick_device  # checks that the GPU asked for is there

    return pick_device(name).type


def _is_device(name: str) -> bool:
    return DEVICE_NAMES.fullmatch(name) is not None


def completion_key(job: Job, settings: BatchSettings, model: dict[str, Any]) -> dict[str, Any]:
    """Everything a slide's outputs depend on (timings aside); ``model`` holds the model's
    fingerprint and the :func:`engine_key`."""
    assert job.detections is not None
    st, calls, outputs = job.slide.stat(), settings.calls, settings.outputs
    threshold = settings.model.threshold if calls.threshold is None else calls.threshold
    return {
        "slide": str(job.slide.resolve()), "slide_size": st.st_size,
        "slide_mtime_ns": st.st_mtime_ns, "slide_sample_sha256": slide_sample_sha256(job.slide),
        "detections": str(job.detections.resolve()),
        "detections_sha256": file_sha256(job.detections), **model, "threshold": threshold,
        "review_band": calls.review_band, "review_fold_std": calls.review_fold_std,
        "hotspot_area_mm2": calls.hotspot_area_mm2,
        "candidate_options": asdict(job_options(job, settings)), "mpp": job.mpp,
        "backend": settings.opening.backend, "outputs": asdict(outputs), "tta": settings.tta,
    }


# 160 KiB a slide, in 10 reads: another slide's compressed pixels differ in every block, and
# a rerun of thousands of slides on network storage must not read gigabytes to skip them
EDGE_BYTES = 1 << 16  # the head (TIFF header, often the IFDs) and the tail, read whole
SAMPLE_BYTES, SAMPLES = 1 << 12, 8  # blocks spread evenly between them


def slide_sample_sha256(path: Path) -> str:
    """A sha256 over samples of the slide's bytes: its first and last 64 KiB and 8 blocks of
    4 KiB between. Path, size and time alone took a different slide of the same size copied
    over this one with its time kept (``cp -p``, ``rsync -t``) for the slide already done;
    hashing whole slides would read gigabytes per slide on every rerun. A slide whose pixels
    lie in a folder of its name beside it (MRXS) adds each of those files' name, size and
    time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for offset, length in _samples(os.fstat(fh.fileno()).st_size):
            fh.seek(offset)
            digest.update(fh.read(length))
    data = path.with_suffix("")
    # MRXS only: another slide's folder of its name (a detector's per-slide outputs, a tile
    # cache) changed its key whenever that folder changed, and was listed file by file
    if path.suffix.lower() == ".mrxs" and data.is_dir():
        for part in sorted(p for p in data.iterdir() if p.is_file()):
            st = part.stat()
            digest.update(f"{part.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def _samples(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the parts :func:`slide_sample_sha256` reads: all of a small file."""
    if size <= 2 * EDGE_BYTES + SAMPLES * SAMPLE_BYTES:
        return [(0, size)]
    inner = size - 2 * EDGE_BYTES - SAMPLE_BYTES  # the last block ends where the tail starts
    blocks = [(EDGE_BYTES + inner * k // (SAMPLES - 1), SAMPLE_BYTES) for k in range(SAMPLES)]
    return [(0, EDGE_BYTES), *blocks, (size - EDGE_BYTES, EDGE_BYTES)]


def outputs_of(key: dict[str, Any]) -> OutputOptions:
    saved = key.get("outputs")
    return OutputOptions(**saved) if isinstance(saved, dict) else OutputOptions()


def record_path(out_dir: Path, job: Job) -> Path:
    return out_dir / STATE_DIR / f"{PurePath(job.slide.name).stem}.done.json"


OUTPUTS_SHA = "outputs_sha256"  # beside the key in a record: each file the run wrote


def record_text(out_dir: Path, job: Job, key: dict[str, Any]) -> str:
    """The completion record of ``job`` just written with ``key``; a hub base model that was
    not cached when the key was made (the run fetched it) is named by the snapshot now cached,
    as the next run's key will name it (else every slide ran again once)."""
    if "base_model" in key and not key.get("base_revision"):
        key = {**key, "base_revision": cached_revision(key["base_model"])}
    wanted = wanted_outputs(job.slide.name, out_dir, outputs_of(key))
    return json.dumps({**key, OUTPUTS_SHA: {kind: file_sha256(p) for kind, p in wanted.items()}},
                      indent=1)


def why_rerun(out_dir: Path, job: Job, key: dict[str, Any]) -> str | None:
    """``None`` when the slide's record matches ``key`` and all its outputs are there as that
    run wrote them, else why it must run again ("" for a slide never finished here)."""
    try:
        saved = json.loads(record_path(out_dir, job).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(saved, dict):
        return "its completion record is unreadable"
    written = saved.pop(OUTPUTS_SHA, None)
    changed = sorted(k for k in key.keys() | saved.keys() if saved.get(k) != key.get(k))
    if changed:
        return "changed since its last run: " + ", ".join(changed)
    wanted = wanted_outputs(job.slide.name, out_dir, outputs_of(key))
    missing = [p.name for p in wanted.values() if not p.is_file()]
    if missing:
        return "output missing: " + ", ".join(missing)
    if not isinstance(written, dict):
        return "its completion record is from an older wsi-atm (no output sha256s)"
    # Regression: a classify run into the same folder replaced the outputs and the batch
    # still took them for its own; then a GeoJSON or CSV edited by hand (only the summary's
    # sha256 was recorded) was still reported as the batch's result, "up to date"
    edited = [p.name for kind, p in wanted.items() if written.get(kind) != file_sha256(p)]
    if edited:
        return ("its outputs were rewritten since (by hand or another run into this folder): "
                + ", ".join(edited))
    return None


def remove_leftovers(out_dir: Path, job: Job) -> None:
    """The completion record and temp files a killed run may have left, before rewriting."""
    record = record_path(out_dir, job)
    record.unlink(missing_ok=True)
    for p in [*output_paths(job.slide.name, out_dir).values(), record]:
        remove_temps(p)


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """One batch per output folder at a time (the lock dies with the process)."""
    try:
        (out_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
        fh = open(out_dir / STATE_DIR / "lock", "w")  # noqa: SIM115 (the with below closes it)
    except OSError as exc:  # Regression: an internal error (a file named .wsi-atm in the way,
        # a folder the permission check could not foresee), before any slide was read
        raise BadInputError(f"--out-dir {out_dir}: cannot write its {STATE_DIR}/lock "
                            f"({exc.strerror or exc})") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # Regression: a file system without locks (Lustre mounted without -o flock,
                # some NFS setups: ENOSYS, ENOLCK, EOPNOTSUPP) was said to be another batch,
                # so no batch could ever write there
                warnings.warn(f"{out_dir} cannot be locked ({exc.strerror or exc}): make sure "
                              "no other wsi-atm batch writes to it at the same time",
                              stacklevel=3)
            else:
                raise BadInputError(f"another wsi-atm batch is writing to {out_dir}") from None
        yield

