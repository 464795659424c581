"""Writing a slide's outputs, all or none, from its result alone."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

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
    all are complete, and an error or a stop while writing leaves none of them (a stop in the
    instant of the renames may leave some, never the summary)."""
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
    try:
        for key, write in writers.items():
            if key in paths:
                staged[key] = out_dir / f".{paths[key].name}.{token}.tmp"
                write(staged[key])
                inject("write")
        for key, tmp in staged.items():
            os.replace(tmp, paths[key])
    except BaseException:
        for tmp in staged.values():
            with contextlib.suppress(OSError):  # the error that brought us here is the news
                tmp.unlink(missing_ok=True)
        raise
    sync_dir(out_dir)
    timings = {**result.timings, "write_s": round(time.perf_counter() - t0, 3)}
    write_summary(result, paths["summary"], timings=timings)
    return paths
