"""``wsi-atm datasets download``: the benchmark's crop datasets, fetched, checked and laid out.

Source: the archive of github.com/DeepMicroscopy/AMi-Br_Benchmark at the pinned commit
(``--url`` or ``$WSI_ATM_DATASETS_URL`` may name another ``http(s)://``/``file://`` URL, a local
.zip/.tar.gz, or an unpacked checkout folder).

What is known about that archive (from its README and scripts; the image files themselves could
not be inspected when this was written): the README lists the dataset folders ``AtNorM-Br/`` and
``AtNorM-MD/`` and the repository has an ``AMi-Br/`` folder; the training scripts read
``AMi-Br/amibr_train_split.csv`` and ``AMi-Br/Train/<final_label>/<dataset_uid>``, the inference
notebooks ``AMi-Br/Test/{Atypical,Normal}`` (826 crops), ``AtNorM-Br/{Atypical,Normal}`` (746)
and ``AtNorM-MD/{Atypical,Normal}`` (2107). The extractor therefore relies on names, not paths:

* a dataset's folder is the directory named like ``DatasetSpec.folder`` (case, ``-`` and ``_``
  ignored) holding ``Atypical/`` and ``Normal/`` crop folders, directly or one level down
  (``AMi-Br/Train/Atypical``, ``AMi-Br/Test/Normal``): crops are pooled over those sub-folders;
* a dataset found nowhere as a folder is looked for as a ``<folder>.zip`` inside the archive;
* the AMi-Br split file and the AtNorM-MD votes are found by file name, preferably inside the
  dataset's folder, otherwise anywhere in the archive;
* AMi-Br's test split is the complement of ``amibr_train_split.csv``; when the archive has
  ``Train``/``Test`` sub-folders they must agree with the CSV.

Layout written (what ``train`` and ``evaluate`` read)::

    DEST/ami-br/train/{Atypical,Normal}/*.png + amibr_train_split.csv   (the 2894 listed crops)
    DEST/ami-br/test/{Atypical,Normal}/*.png                             (every other crop)
    DEST/atnorm-br/{Atypical,Normal}/*.png
    DEST/atnorm-md/{Atypical,Normal}/*.png + AtNorM-MD_expert_votes.csv
    DEST/<name>/DATASET.json                                             (source, sha256, counts)

Everything is built in hidden ``DEST/.wsi-atm-<pid>-*`` temporaries and renamed into place only
after every check passed, so a failed run leaves nothing and a killed one leaves only hidden
temporaries, which the next run removes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from wsi_atm import __version__
from wsi_atm.errors import BadInputError
from wsi_atm.train.datasets.archives import commit_of, open_archive
from wsi_atm.train.datasets.build import (
    build,
    clean_stale,
    fetch,
    is_installed,
    local_path,
    recorded_counts,
    replace_dir,
)
from wsi_atm.train.datasets.specs import (
    CLASSES,
    DATASETS,
    DEFAULT_URL,
    RECORD,
    TMP_PREFIX,
    UPSTREAM_COMMIT,
    UPSTREAM_REPO,
    URL_ENV,
    DatasetSpec,
    DownloadResult,
)

# --- the public entry points ------------------------------------------------------------------


def with_counts(spec: DatasetSpec, expected: Mapping[str, int]) -> DatasetSpec:
    """``spec`` expecting other counts: ``{"Atypical": a, "Normal": n[, "train": rows]}``."""
    unknown = set(expected) - {*CLASSES, "train"}
    if unknown:
        raise ValueError(f"unknown count keys: {', '.join(sorted(unknown))}")
    counts = {c: expected.get(c, spec.counts[c]) for c in CLASSES}
    return dataclasses.replace(spec, counts=counts,
                               split_rows=expected.get("train", spec.split_rows))


def download(
    name: str, dest: str | os.PathLike[str], url: str | None = None, force: bool = False,
    quiet: bool = True, expected_counts: Mapping[str, int] | None = None,
) -> DownloadResult:
    """Fetch, check and lay out dataset ``name`` under ``dest``.

    ``expected_counts`` replaces the registry's counts (``{"Atypical", "Normal"[, "train"]}``),
    e.g. for small test archives.
    """
    specs = dict(DATASETS)
    if expected_counts is not None:
        if name not in specs:
            raise BadInputError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
        specs[name] = with_counts(specs[name], expected_counts)
    return download_many([name], dest, url=url, force=force, quiet=quiet, specs=specs)[0]


def download_many(
    names: Iterable[str], dest: str | os.PathLike[str], url: str | None = None,
    force: bool = False, quiet: bool = True, specs: Mapping[str, DatasetSpec] | None = None,
) -> list[DownloadResult]:
    """Like :func:`download` for several datasets from one fetch of the archive.

    Either every dataset that needed work is in place afterwards or none is touched.
    """
    specs = DATASETS if specs is None else specs
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in specs]
    if unknown or not wanted:
        raise BadInputError(f"unknown dataset {', '.join(map(repr, unknown)) or '(none)'}; "
                            f"known: {', '.join(specs)}")
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise BadInputError(f"{dest}: not a folder")
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{dest}: cannot create ({exc.strerror or exc})") from None
    try:
        clean_stale(dest)
        todo = [n for n in wanted if force or not is_installed(dest / n, specs[n])]
        _refuse_foreign([dest / n for n in todo], force)
        built = _build_all(todo, specs, dest, url or os.environ.get(URL_ENV) or DEFAULT_URL,
                           quiet) if todo else {}
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return [DownloadResult(n, dest / n, n in built, built.get(n) or recorded_counts(dest / n) or {})
            for n in wanted]


def _refuse_foreign(targets: list[Path], force: bool) -> None:
    """Never replace, without --force, a non-empty folder that no download of ours wrote."""
    for target in targets:
        if force or not target.exists():
            continue
        if not target.is_dir() or (recorded_counts(target) is None and any(target.iterdir())):
            raise BadInputError(f"{target} exists and was not written by `wsi-atm datasets "
                                "download`; move it away or pass --force to replace it")


def _build_all(names: list[str], specs: Mapping[str, DatasetSpec], dest: Path, source: str,
               quiet: bool) -> dict[str, dict[str, int]]:
    """Fetch ``source`` once, build every dataset in a temp folder, then rename them all."""
    local = local_path(source)
    fetched: Path | None = None
    sha: str | None = None
    if local is None or not local.is_dir():
        fetched, sha = fetch(source, dest, quiet)
    work: dict[str, Path] = {}
    counts: dict[str, dict[str, int]] = {}
    try:
        archive = open_archive(fetched or local or Path(source), source)
        try:
            for n in names:
                work[n] = Path(tempfile.mkdtemp(dir=dest, prefix=f"{TMP_PREFIX}{os.getpid()}-"))
                counts[n] = build(archive, specs[n], work[n], quiet)
                record = _record(n, source, sha, commit_of(archive.names), counts[n])
                (work[n] / RECORD).write_text(json.dumps(record, indent=2) + "\n",
                                              encoding="utf-8")
        finally:
            archive.close()
        for n in names:
            replace_dir(work.pop(n), dest / n)
    finally:
        if fetched is not None:
            fetched.unlink(missing_ok=True)
        for path in work.values():
            shutil.rmtree(path, ignore_errors=True)
    return counts


def _record(name: str, source: str, sha: str | None, commit: str | None,
            counts: dict[str, int]) -> dict[str, object]:
    return {
        "dataset": name,
        "source": source,
        "upstream_repository": f"https://github.com/{UPSTREAM_REPO}",
        "upstream_commit": UPSTREAM_COMMIT,
        "archive_commit": commit,
        "archive_sha256": sha,
        "counts": counts,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wsi_atm_version": __version__,
    }


__all__ = [
    "DATASETS", "DEFAULT_URL", "UPSTREAM_COMMIT", "URL_ENV", "DatasetSpec", "DownloadResult",
    "download", "download_many", "is_installed", "with_counts",
]
