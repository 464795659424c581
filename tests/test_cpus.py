"""Thread pools are sized by the CPUs a process may use: its affinity and its cgroup quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_atm import cpus
from wsi_atm.crops import default_workers


@pytest.fixture()
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def v2(root: Path, text: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def v1(root: Path, quota: str, period: str) -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.mark.usefixtures("eight_cpus")
@pytest.mark.parametrize("make, expected", [
    (lambda d: d, 8),  # no cgroup files: the affinity
    (lambda d: v2(d, "max 100000\n"), 8),  # v2, no quota
    (lambda d: v2(d, "250000 100000\n"), 3),  # docker --cpus=2.5: rounded up
    (lambda d: v2(d, "50000 100000\n"), 1),  # half a CPU: still one thread
    (lambda d: v2(d, "1600000 100000\n"), 8),  # a quota above the affinity: the affinity
    (lambda d: v1(d, "400000", "100000"), 4),  # cgroup v1
    (lambda d: v1(d, "-1", "100000"), 8),  # v1, no quota
    (lambda d: v2(d, "garbage"), 8),
])
def test_usable_cpus_is_the_smaller_of_affinity_and_quota(tmp_path, make, expected):
    assert cpus.usable_cpus(make(tmp_path / "cg")) == expected


def test_without_affinity_the_core_count_counts(tmp_path, monkeypatch):
    monkeypatch.delattr(cpus.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 6)
    assert cpus.usable_cpus(v2(tmp_path, "200000 100000")) == 2
    assert cpus.usable_cpus(tmp_path / "none") == 6


def test_the_crop_threads_follow_the_usable_cpus(monkeypatch):
    # Regression: thread pools were sized by os.cpu_count(), the host's cores, so a 2-CPU
    # container on a 64-core node ran 8 crop threads and 64 inference threads
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(cpus, "cgroup_quota", lambda cgroup=cpus.CGROUP: 2)
    assert default_workers() == 2
    from wsi_atm.batch import local_threads

    assert local_threads(2) == 1
