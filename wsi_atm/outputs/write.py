"""Writing a slide's outputs, all or none, from its result alone."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from wsi_atm.errors import OutputError
from wsi_atm.faults import inject
from wsi_atm.files import atomic_write_bytes, sync_dir
from wsi_atm.options import OutputOptions
from wsi_atm.outputs.geojson import write_geojson
from wsi_atm.outputs.paths import retire_outputs, wanted_outputs
from wsi_atm.outputs.points import write_points_json
from wsi_atm.outputs.summary import write_summary
from wsi_atm.outputs.tables import write_candidates_csv
from wsi_atm.slide_result import SlideResult


def write_outputs(result: SlideResult, out_dir: Path, outputs: OutputOptions) -> dict[str, Path]:
    """Write the slide's outputs from its result alone. Every file is written to a temp name
    first and all are renamed together once written, the summary last, so its presence means
    all are complete, and an error or a stop while writing leaves none of them. A file system
    error (a full disk, EIO, the folder made read-only or removed) is an :class:`OutputError`
    naming the folder. Regression: it was an internal error naming a line of pathlib."""
    try:
        return _write_outputs(result, out_dir, outputs)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write the outputs of {result.slide.name} "
                          f"({exc.strerror or exc})") from exc


def _write_outputs(result: SlideResult, out_dir: Path, outputs: OutputOptions) -> dict[str, Path]:
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = wanted_outputs(result.slide.name, out_dir, outputs)
    retire_outputs(result.slide.name, out_dir)
    if "png" in paths and result.review_png is None:
        raise ValueError("the review picture was not rendered for this result")
    writers: dict[str, Callable[[Path], None]] = {
        "geojson": lambda p: write_geojson(result, p, shape=outputs.shape,
                                           review_class=outputs.review_class),
        "csv": lambda p: write_candidates_csv(result, p),
        "points": lambda p: write_points_json(result, p),
        "png": lambda p: atomic_write_bytes(p, result.review_png or b""),
    }
    token = secrets.token_hex(6)
    staged: dict[str, Path] = {}
    placed: list[Path] = []
    try:
        for key, write in writers.items():
            if key in paths:
                staged[key] = out_dir / f".{paths[key].name}.{token}.tmp"
                write(staged[key])
                inject("write")
        for key, tmp in staged.items():
            os.replace(tmp, paths[key])
            placed.append(paths[key])
        sync_dir(out_dir)
        timings = {**result.timings, "write_s": round(time.perf_counter() - t0, 3)}
        write_summary(result, paths["summary"], timings=timings)
    except BaseException:
        # Regression: a summary that could not be written (a full disk) left the new GeoJSON,
        # CSV and picture of a run that failed. Once the summary is in place all are complete
        if not paths["summary"].is_file():
            for path in [*staged.values(), *placed]:
                with contextlib.suppress(OSError):  # the error that brought us here is the news
                    path.unlink(missing_ok=True)
        raise
    return paths
