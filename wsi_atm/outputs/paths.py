"""Where a slide's outputs go, and whether they can go there: the names of its files, which a
run writes, what would stop them being written (an input under an output's name, a folder in
its place, a name the file system cannot hold), and clearing a slide's earlier outputs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from wsi_atm.files import remove_temps
from wsi_atm.options import OutputOptions


def output_paths(slide_name: str, out_dir: Path) -> dict[str, Path]:
    """Every file a slide can have; which are written depends on :class:`OutputOptions`."""
    stem = Path(slide_name).stem
    return {
        "geojson": out_dir / f"{stem}.geojson",
        "csv": out_dir / f"{stem}.csv",
        "summary": out_dir / f"{stem}.summary.json",
        "png": out_dir / f"{stem}.png",
        "points": out_dir / f"{stem}.points.json",
    }


def file_ids(paths: list[Path]) -> set[tuple[int, int]]:
    """(device, inode) of each existing file: the same file under any name or link."""
    ids = set()
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def overwritten_inputs(slide_name: str, inputs: set[tuple[int, int]],
                       out_dir: Path) -> list[Path]:
    """The slide's output paths that are one of ``inputs`` (:func:`file_ids` of its slide and
    detections files; computed once for a whole batch)."""
    return [p for p in output_paths(slide_name, out_dir).values() if file_ids([p]) & inputs]


# A staged output's temp name wraps the output's name, and the writer's own temp name wraps
# that: ".{.{name}.{12 hex}.tmp}.{12 hex}.tmp", 36 bytes more than the name
TEMP_NAME_EXTRA = 36


def name_too_long(slide_name: str, out_dir: Path) -> str | None:
    """Why the slide's output files cannot be named in ``out_dir`` (its file system's name
    limit, in bytes), or None. Regression: a 226-byte name (70 CJK characters) failed only
    when writing, an internal error after the earlier outputs were deleted."""
    folder = next((p for p in (out_dir.resolve(), *out_dir.resolve().parents) if p.exists()),
                  Path("/"))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max(len(p.name.encode("utf-8", "surrogateescape"))
                  for p in output_paths(slide_name, out_dir).values()) + TEMP_NAME_EXTRA
    if longest <= limit:
        return None
    return (f"{slide_name}: the name is too long for its output files here ({longest} bytes "
            f"with the temporary names; the file system allows {limit}): rename the slide")


def blocked_outputs(slide_name: str, out_dir: Path) -> list[Path]:
    """The slide's output paths taken by something that is not a file (a folder, say): no run
    could write them. Regression: found only when the earlier outputs were already deleted,
    as an internal error."""
    return [p for p in output_paths(slide_name, out_dir).values()
            if p.exists() and not p.is_file()]


def foreign_outputs(slide_name: str, out_dir: Path) -> list[Path]:
    """The slide's earlier outputs this user may not remove or replace: another user's files in
    a folder with the sticky bit (/tmp, a shared results folder with +t), which only their
    owner, the folder's or root may remove. Regression: a colleague's outputs of the same slide
    there gave an internal error (PermissionError) once the model had loaded."""
    try:
        folder = out_dir.stat()
    except OSError:
        return []
    me = os.geteuid()
    if not folder.st_mode & stat.S_ISVTX or me in (0, folder.st_uid):
        return []
    found = []
    for path in output_paths(slide_name, out_dir).values():
        try:
            owner = path.lstat().st_uid
        except OSError:
            continue
        if owner != me:
            found.append(path)
    return found


def wanted_outputs(slide_name: str, out_dir: Path, outputs: OutputOptions) -> dict[str, Path]:
    """The files a run with ``outputs`` writes for a slide (the summary among them)."""
    paths = output_paths(slide_name, out_dir)
    if not outputs.figure:
        paths.pop("png")
    if not outputs.points_json:
        paths.pop("points")
    return paths


def retire_outputs(slide_name: str, out_dir: Path) -> None:
    """Before a slide is classified again: its earlier outputs go, summary first (it vouches
    for the others), and any temp files a killed run left, so a run that then fails or is
    stopped leaves nothing that could pass for its own result or mix with it."""
    every = output_paths(slide_name, out_dir)
    every["summary"].unlink(missing_ok=True)
    for path in every.values():
        path.unlink(missing_ok=True)
        remove_temps(path)


def output_problems(slide_name: str, out_dir: Path, inputs: set[tuple[int, int]]) -> list[str]:
    """Why the slide's outputs could not be written in ``out_dir``, one line each with what to
    do (empty: they can): checked before any work, by ``classify`` for its slide and by
    ``batch`` for every slide of the plan. ``inputs``: :func:`file_ids` of the input files."""
    problems = [f"{p} would overwrite an input file: choose another --out-dir"
                for p in overwritten_inputs(slide_name, inputs, out_dir)]
    problems += [f"{p} is a folder (or other non-file) where an output must go: move it or "
                 "choose another --out-dir" for p in blocked_outputs(slide_name, out_dir)]
    problems += [f"{p} belongs to another user and this folder lets only its owner replace it "
                 "(sticky bit): choose another --out-dir"
                 for p in foreign_outputs(slide_name, out_dir)]
    too_long = name_too_long(slide_name, out_dir)
    return [*problems, too_long] if too_long else problems
