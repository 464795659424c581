"""The benchmark scripts run end to end at a small size, and the crop benchmark's decode limit
decodes exactly the tiles the engine decodes (else its ratio would compare different work)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.conftest import REPO
from wsi_atm.crops import plan_crops
from wsi_atm.crops.cutting import plan_cuts
from wsi_atm.crops.plan import tile_order, window_origins
from wsi_atm.slides import open_slide


def _load(name: str) -> ModuleType:
    """A benchmark script as a module, without putting benchmarks/ on the path."""
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load("crops")


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A benchmark script run as a user runs it, at the tests' slide size."""
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--size",
                           str(SIZE), *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)

SIZE = 3000


@pytest.fixture(scope="module")
def bench_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "bench.svs"
    bench.ensure_slide(path, SIZE, seed=0)
    return path


def test_the_limit_decodes_the_engines_tiles(bench_slide: Path) -> None:
    xs, ys = bench.candidates(300, SIZE, seed=0)
    with open_slide(bench_slide) as slide:
        plan = plan_crops(slide)
        order = tile_order(slide, xs, ys, plan)
        origins = window_origins(slide, xs[order], ys[order], plan)
        grid = slide.tile_grid(plan.level)
        assert grid is not None and (grid.tile_w, grid.tile_h) == (bench.TILE, bench.TILE)
        engine = plan_cuts(grid, origins, plan.read_shape).tiles
    limit = bench.touched_tiles(xs, ys, plan.read_size, SIZE)
    assert len(engine) == len(set(engine.tolist()))  # each decoded once
    assert sorted(engine.tolist()) == limit


@pytest.mark.parametrize("decoder", ["imagecodecs", "simplejpeg"])
@pytest.mark.parametrize("write", [0, 60_000])  # (c) and (c'): with the crops' bytes written
def test_the_limit_decodes_each_tile_once_per_run(bench_slide: Path, write: int, decoder: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tiles = list(range(0, 60, 3))
    decoded: list[bytes] = []
    module, name = ((bench.imagecodecs, "jpeg8_decode") if decoder == "imagecodecs"
                    else (bench.simplejpeg, "decode_jpeg"))
    real = getattr(module, name)

    def counting(data: bytes, *args: object, **kwargs: object) -> object:
        decoded.append(bytes(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    one, spread = bench.decode_limit(bench_slide, tiles, threads=2, repeats=1, write=write,
                                     decoder=decoder)
    assert one > 0 and spread > 0
    # a warm-up, then every tile once on one thread and once more spread over two
    assert len(decoded) == 1 + 2 * len(tiles)
    assert len(set(decoded[1:])) == len(tiles)
    assert sorted(decoded[1 : 1 + len(tiles)]) == sorted(decoded[1 + len(tiles) :])


def test_the_limit_is_the_faster_decoder(bench_slide: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    times = {"imagecodecs": (2.0, 1.5), "simplejpeg": (3.0, 1.0)}

    def timed(path: Path, tiles: list[int], threads: int, repeats: int, write: int,
              decoder: str) -> tuple[float, float]:
        return times[decoder]

    monkeypatch.setattr(bench, "decode_limit", timed)
    one, spread, each = bench.fastest_limit(bench_slide, [0], 2, 1, 0)
    assert (one, spread) == (2.0, 1.0) and each == times


def test_the_crops_benchmark_runs_and_reports_every_ratio(bench_slide: Path) -> None:
    proc = _run_script("crops", "--candidates", "120", "--rounds", "3", "--keep",
                       str(bench_slide))
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| (")]
    assert [r.split(")")[0] + ")" for r in rows] == ["| (a)", "| (a')", "| (b)", "| (c)",
                                                          "| (c')", "| (d)"]
    for row in rows:
        rate, ratio = (float(v) for v in row.strip("| ").split("|")[1:3])
        assert rate > 0 and ratio > 0
    intervals = re.findall(r"median ([0-9.]+), 90 % interval ([0-9.]+)–([0-9.]+)", proc.stdout)
    assert len(intervals) == 2  # all cores and one thread
    for median, lo, hi in intervals:
        assert 0 < float(lo) <= float(median) <= float(hi)
    rounds = re.search(r"in each of the 3 rounds[^:]*: ([0-9., ]+) \(", proc.stdout)
    assert rounds is not None and len(rounds.group(1).split(",")) == 3


def test_median_interval_brackets_the_median() -> None:
    values = list(np.random.default_rng(1).normal(0.85, 0.05, 21))
    median, lo, hi = bench.median_interval(values)
    assert median == pytest.approx(float(np.median(values)))
    assert lo < median < hi and hi - lo < 0.1
    assert bench.median_interval([0.8] * 5) == (0.8, 0.8, 0.8)


def test_the_partial_decode_study_decodes_the_needed_rows_exactly(bench_slide: Path) -> None:
    partial = _load("partial_decode")
    xs, ys = bench.candidates(200, SIZE, seed=0)
    tiles, last = partial.rows_needed(bench_slide, xs, ys)
    streams = partial.tile_streams(bench_slide, tiles)
    out = np.empty((bench.TILE, bench.TILE, 3), np.uint8)
    cut_short = 0
    for stream, r in zip(streams, last, strict=True):
        whole = bench.simplejpeg.decode_jpeg(stream, colorspace="RGB", strict=True)
        assert 0 < r <= bench.TILE
        assert partial.decode_top(stream, min(bench.TILE, r + 1), out) == ""
        np.testing.assert_array_equal(out[:r], whole[:r])
        cut_short += r + 1 < bench.TILE
    assert cut_short > len(tiles) // 4  # the cut really decoded fewer rows for many tiles
    counts = partial.damage_counts(streams, [min(bench.TILE, r + 1) for r in last], 30)
    assert counts["whole refuses"] == sum(v for k, v in counts.items() if k != "whole refuses")


def test_the_partial_decode_study_runs(bench_slide: Path) -> None:
    proc = _run_script("partial_decode", "--candidates", "100", "--variants", "10", "--keep",
                       str(bench_slide))
    assert proc.returncode == 0, proc.stderr
    assert "| tiles whose needed rows differ from the whole decode | 0 |" in proc.stdout
