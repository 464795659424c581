"""Which slides, with which detections: folder pairing, shared multi-slide files, manifests.

Every check that can fail before work starts (manifest rows, output clashes) fails here, listing
every problem; problems of one slide (ambiguous or missing detections) become its outcome.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
import unicodedata
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any

from wsi_atm.detections import CandidateOptions, detect_format, list_images
from wsi_atm.detections.images import name_keys
from wsi_atm.detections.records import CSV, MIDOG_JSON, SLIDERUNNER
from wsi_atm.errors import BadInputError, DetectionsError, OptionError
from wsi_atm.files import printable, utf8_name
from wsi_atm.models.card import ModelCard
from wsi_atm.options import (
    MPP_RANGE,
    CallOptions,
    OpenOptions,
    OutputOptions,
    check_mpp,
    check_out_dir,
)
from wsi_atm.outputs.paths import file_ids, output_paths, output_problems

SLIDE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn",
                    ".vms", ".vmu", ".bif", ".svslide", ".qptiff")
MAX_DETECTIONS_BYTES = 2 << 30  # larger files next to a slide are not sniffed as detections
# what a batch writes for the cohort beside the slides' outputs (see batch.cohort)
COHORT_FILES = ("cohort.csv", "cohort.png", "report.html")


class SlideStatus(StrEnum):
    """A slide's status in a batch (``cohort.csv``'s ``status`` column)."""

    OK = "ok"
    SKIPPED = "skipped"  # up to date: its completion record matched
    FAILED = "failed"
    NO_DETECTIONS = "no_detections"


STATUSES = tuple(s.value for s in SlideStatus)


@dataclass(frozen=True)
class Job:
    slide: Path
    detections: Path | None
    mpp: float | None = None
    status: str = ""  # set when planning already decided: FAILED or NO_DETECTIONS
    note: str = ""  # why
    image: str | None = None  # a manifest's image column: the entry of a multi-slide file
    mpp_origin: str = "the manifest's mpp"  # who gave ``mpp``: a manifest row, or --mpp


@dataclass
class Outcome:
    job: Job
    status: str  # a SlideStatus value
    error: str = ""
    elapsed_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchSettings:
    model: ModelCard
    candidate_options: CandidateOptions
    opening: OpenOptions = field(default_factory=OpenOptions)  # mpp: per job instead
    calls: CallOptions = field(default_factory=CallOptions)
    outputs: OutputOptions = field(default_factory=OutputOptions)
    device: str = "auto"
    batch_size: int | None = None
    tta: bool = False
    compile: bool = False
    # torch, onnx, or auto (ONNX Runtime on CPU when faster); None: WSI_ATM_ENGINE's, which
    # CPU machines follow and GPUs do not
    engine: str | None = "auto"
    precision: str = "auto"  # auto, float32 or bf16 (PyTorch's; see engines.precision_on)
    threads: int | None = None  # CPU threads per model (None: all cores)


def job_options(job: Job, settings: BatchSettings) -> CandidateOptions:
    """The batch's candidate options with the job's own image choice, if it has one."""
    if job.image:
        return replace(settings.candidate_options, image=job.image)
    return settings.candidate_options


def slide_extension(name: str) -> str:
    low = name.lower()
    return next((ext for ext in SLIDE_EXTENSIONS if low.endswith(ext)), "")


def pairing_stem(slide: Path) -> str:
    """``NAME`` of ``NAME.<wsi extension>`` (``a.ome.tif`` → ``a``)."""
    ext = slide_extension(slide.name)
    return slide.name[: -len(ext)] if ext else slide.stem


def find_slides(folder: Path, patterns: tuple[str, ...] = ()) -> list[Path]:
    """Files of ``folder`` with a WSI extension, or matching any glob of ``patterns`` (none is
    bad input)."""
    if not folder.is_dir():
        raise BadInputError(f"slide folder not found: {folder}")
    found = ({p for pat in patterns for p in _glob(folder, pat)} if patterns
             else {p for p in folder.iterdir() if slide_extension(p.name)})
    slides = sorted(p for p in found if p.is_file() and not p.name.startswith("."))
    if not slides:  # a mistyped pattern or folder, not a cohort of none
        looked = (f"files matching {', '.join(repr(p) for p in patterns)}" if patterns
                  else "files with a WSI extension")
        raise BadInputError(f"no slides in {folder}: looked for {looked}")
    return slides


def _glob(folder: Path, pattern: str) -> list[Path]:
    """``folder.glob(pattern)``; a pattern pathlib refuses is bad input. Regression: an empty
    or absolute --pattern was an internal error (ValueError, NotImplementedError)."""
    try:
        return list(folder.glob(pattern))
    except (ValueError, NotImplementedError) as exc:
        raise OptionError(f"--pattern {pattern!r}: {exc}; give a glob relative to the slide "
                          "folder, such as '*.svs'") from None


def _by_prefix(folder: Path) -> dict[str, list[Path]]:
    """Files of ``folder`` under every ``NAME`` they could belong to (``a.b.csv``: a, a.b)."""
    index: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or slide_extension(p.name) or not p.is_file():
            continue
        for i, ch in enumerate(p.name):
            if ch == "." and i:
                index.setdefault(p.name[:i], []).append(p)
    return index


def _unrecognised(path: Path) -> str:
    """Why ``path`` is not a detection file ('' when its format is recognised)."""
    if path.stat().st_size > MAX_DETECTIONS_BYTES:
        return f"{path.name}: too large for a detection file"
    try:
        detect_format(path)
    except DetectionsError as exc:
        return str(exc).split("; supported formats")[0]
    return ""


def pair_detections(slide: Path, candidates: list[Path]) -> Job:
    """The one recognised detection file among ``candidates`` (the folder's ``NAME.*``)."""
    reasons = {p: _unrecognised(p) for p in candidates}
    found = [p for p in candidates if not reasons[p]]
    if len(found) == 1:
        return Job(slide, found[0])
    stem = pairing_stem(slide)
    if found:
        names = ", ".join(p.name for p in found)
        return Job(slide, None, status=SlideStatus.FAILED,
                   note=f"several detection files match {stem}.*: {names}; keep one or use "
                        "--manifest")
    ignored = "; ".join(reasons.values())
    return Job(slide, None, status=SlideStatus.NO_DETECTIONS,
               note=f"no detection file {stem}.*" + (f" (ignored {ignored})" if ignored else ""))


def _listed(slide: Path, names: set[str]) -> bool:
    """Whether a multi-slide file names ``slide`` (by file name, else stem; any case)."""
    return bool(name_keys(slide.name) & names)


def share_detections(slides: list[Path], det_file: Path) -> list[Job]:
    """One detection file for every slide: a multi-slide file, or a single slide's file."""
    fmt = detect_format(det_file)
    multi = fmt in (MIDOG_JSON, SLIDERUNNER) or (fmt == CSV and _names_images(det_file))
    if not multi:
        if len(slides) > 1:
            raise BadInputError(
                f"{det_file.name} is a {fmt} file with one slide's detections (no Image or "
                f"slide column), not those of "
                f"{len(slides)} slides: give --detections-dir or a --manifest")
        return [Job(s, det_file) for s in slides]
    names = set()
    for im in list_images(det_file):
        names |= name_keys(im.name)
    return [Job(s, det_file) if _listed(s, names) else
            Job(s, None, status=SlideStatus.NO_DETECTIONS, note=f"no entry in {det_file.name}")
            for s in slides]


def _names_images(path: Path) -> bool:
    """Whether a table names the images its rows belong to (QuPath's export of a project)."""
    try:
        return bool(list_images(path))
    except DetectionsError:
        return False


def _manifest_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"cannot read manifest {path}: {exc}") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if not {"slide", "detections"} <= set(header):
        raise BadInputError(f"{path}: a manifest needs the columns slide,detections[,mpp,image]; "
                            f"its header is {','.join(header) or '(empty)'}")
    twice = sorted({h for h in header if h and header.count(h) > 1})
    if twice:  # Regression: the last of two "slide" columns was used, silently
        raise BadInputError(f"{path}: the header names {', '.join(twice)} more than once")
    for line, row in enumerate(rows[1:], start=2):
        extra = [c for c in row[len(header):] if c.strip()]
        if extra:  # Regression: a value beyond the header (an mpp) was dropped, silently
            raise BadInputError(f"{path}: line {line} has {len(row)} cells but the header "
                                f"names {len(header)} columns")
    return [dict(zip(header, (c.strip() for c in r), strict=False)) for r in rows[1:]]


def _manifest_job(base: Path, row: dict[str, str]) -> tuple[Job, list[str]]:
    problems, mpp = [], None
    slide_text, det_text, mpp_text, image = (row.get(k) or "" for k in
                                             ("slide", "detections", "mpp", "image"))
    slide = base / slide_text
    det = base / det_text if det_text else None
    if not slide_text or not slide.is_file():
        problems.append(f"slide not found: {slide_text!r}")
    if det is not None and not det.is_file():
        problems.append(f"detections not found: {det_text!r}")
    if mpp_text:
        try:
            mpp = check_mpp(float(mpp_text))
        except (ValueError, OptionError):
            problems.append(f"mpp is not a slide's µm per pixel ({MPP_RANGE[0]:g} to "
                            f"{MPP_RANGE[1]:g}): {mpp_text!r}")
    status, note = (SlideStatus.NO_DETECTIONS, "no detections given") if det is None else ("", "")
    return Job(slide, det, mpp, status, note, image=image or None), problems


def read_manifest(path: Path) -> list[Job]:
    """Jobs of a manifest; any missing file or bad value rejects it, listing every bad row."""
    jobs: list[Job] = []
    bad: list[str] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(_manifest_rows(path), start=2):
        if not any(row.values()):
            continue
        job, problems = _manifest_job(path.parent, row)
        key = str(job.slide.resolve())
        if key in seen:
            problems.append(f"slide already listed on line {seen[key]}")
        seen.setdefault(key, line)
        if problems:
            bad.append(f"line {line}: " + "; ".join(problems))
        jobs.append(job)
    if bad:
        raise BadInputError(f"{path}: {len(bad)} bad row(s), nothing was started:\n  "
                            + "\n  ".join(bad))
    if not jobs:
        raise BadInputError(f"{path}: the manifest lists no slides")
    return jobs


def names_fold(out_dir: Path) -> bool:
    """Whether the file system ``out_dir`` lies on (or will, the nearest existing folder above
    it) takes names differing only in case or Unicode form for one (macOS, Windows and
    SMB/exFAT shares), found by a probe file; True when it cannot be told."""
    folder = next((p for p in (out_dir, *out_dir.absolute().parents) if p.is_dir()), None)
    if folder is None:
        return True
    try:
        fd, name = tempfile.mkstemp(prefix=".wsi-atm-case-\u00c9", dir=folder)
    except OSError:
        return True
    os.close(fd)
    probe = Path(name)
    try:
        twins = (probe.name.replace("\u00c9", "\u00e9"),  # lower case
                 unicodedata.normalize("NFD", probe.name))  # decomposed
        return any((folder / twin).exists() for twin in twins)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def check_outputs(jobs: list[Job], out_dir: Path) -> None:
    """Refuse plans where two slides write the same outputs or an output overwrites an input."""
    inputs = file_ids([p for j in jobs for p in (j.slide, j.detections) if p is not None])
    folds: bool | None = None  # probed once two stems differ only in case or Unicode form
    owners: dict[str, Path] = {}  # by stem
    folded: dict[str, Path] = {}  # by stem ignoring case and Unicode form
    clashes: dict[str, None] = {}  # ordered, without repeats
    for job in jobs:
        stem = PurePath(job.slide.name).stem
        # Regression: a slide cohort.svs wrote cohort.csv/.png, then the cohort's overwrote them
        writes = {p.name.lower() for p in output_paths(job.slide.name, out_dir).values()}
        taken = [name for name in COHORT_FILES if name in writes]
        if taken:
            clashes[f"{job.slide} writes {stem}.*, which the batch's own {', '.join(taken)} "
                    "would overwrite: rename the slide"] = None
        # ignoring case and Unicode form: on macOS, Windows and SMB/exFAT shares Case.svs and
        # case.svs write the same files (regression: one slide's outputs replaced the other's)
        # Only there: on a file system that tells them apart (ext4, XFS, Lustre...) each
        # writes its own files (regression: such a batch was refused on Linux too)
        key = unicodedata.normalize("NFC", stem).casefold()
        if stem in owners:
            clashes[f"{owners[stem]} and {job.slide} both write {stem}.*"] = None
        elif key in folded:
            if folds is None:
                folds = names_fold(out_dir)
            if folds:
                clashes[f"{folded[key]} and {job.slide} both write {stem}.* on a file system "
                        "that ignores case (macOS, Windows shares): rename one"] = None
        owners.setdefault(stem, job.slide)
        folded.setdefault(key, job.slide)
        clashes |= dict.fromkeys(output_problems(job.slide.name, out_dir, inputs))
    if clashes:
        raise BadInputError(f"{len(clashes)} output clash(es), nothing was started:\n  "
                            + "\n  ".join(clashes))


def pair_folder(slides: list[Path], detections_dir: Path | None, out_dir: Path) -> list[Job]:
    """Pair each slide with ``NAME.*`` in ``detections_dir`` (default: the slide's folder)."""
    if detections_dir is not None and not detections_dir.is_dir():
        raise BadInputError(f"detections folder not found: {detections_dir}")
    folders = {detections_dir or s.parent for s in slides}
    if out_dir.resolve() in {f.resolve() for f in folders}:
        raise BadInputError(f"--out-dir {out_dir} is where detections are read from: its "
                            "outputs NAME.csv / NAME.geojson would be taken for (or overwrite) "
                            "detection files; choose another folder")
    index = {f: _by_prefix(f) for f in folders}
    stems = {pairing_stem(s) for s in slides}
    jobs = []
    for s in slides:
        stem = pairing_stem(s)
        # a.b.csv belongs to slide a.b.svs when there is one, not to a.svs
        longer = [t for t in stems if t.startswith(stem + ".")]
        found = [p for p in index[detections_dir or s.parent].get(stem, [])
                 if not any(p.name.startswith(t + ".") for t in longer)]
        jobs.append(pair_detections(s, found))
    return jobs


def plan_jobs(slide_dir: Path | None, manifest: Path | None, detections: Path | None,
              detections_dir: Path | None, out_dir: Path, patterns: tuple[str, ...] = (),
              mpp: float | None = None) -> list[Job]:
    """The jobs of a batch, or a ``BadInputError`` (exit 2) before any work."""
    check_mpp(mpp)
    check_out_dir(out_dir)
    if manifest is not None:
        if slide_dir is not None or detections is not None or detections_dir is not None:
            raise BadInputError("--manifest lists slides and detections: give no SLIDE_DIR, "
                                "--detections or --detections-dir with it")
        jobs = read_manifest(manifest)
    elif slide_dir is None:
        raise BadInputError("give a slide folder or --manifest")
    elif detections is not None:
        jobs = share_detections(find_slides(slide_dir, patterns), detections)
    else:
        jobs = pair_folder(find_slides(slide_dir, patterns), detections_dir, out_dir)
    if mpp is not None:
        jobs = [j if j.mpp is not None else replace(j, mpp=mpp, mpp_origin="--mpp")
                for j in jobs]
    jobs = [_with_utf8_names(j) for j in jobs]
    check_outputs(jobs, out_dir)
    return jobs


def _with_utf8_names(job: Job) -> Job:
    """A job whose slide or detections name is not UTF-8 fails by itself: its outputs (UTF-8
    JSON, CSV, GeoJSON) cannot name it. It crashed the whole batch at the cohort's write."""
    bad = [p for p in (job.slide, job.detections) if p is not None and not utf8_name(p)]
    if not bad or job.status:
        return job
    return replace(job, status=SlideStatus.FAILED,
                   note=f"{printable(bad[0])}: the file name is not valid UTF-8; rename it")
