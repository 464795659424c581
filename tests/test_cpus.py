"""Thread pools are sized by the CPUs a process may use: its affinity, the CPU quota of its
cgroup and of every cgroup above it (v2 and v1), and $WSI_ATM_CPUS."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_atm import cpus
from wsi_atm.crops import default_workers
from wsi_atm.errors import OptionError


@pytest.fixture()
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake /sys/fs/cgroup and /proc/self/cgroup; 8 CPUs of affinity; no $WSI_ATM_CPUS."""
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv(cpus.CPUS_ENV, raising=False)
    root = tmp_path / "cgroup"
    root.mkdir()
    monkeypatch.setattr(cpus, "PROC_CGROUP", tmp_path / "proc-self-cgroup")
    (tmp_path / "proc-self-cgroup").write_text("0::/\n")
    return root


def place(root: Path, membership: str, files: dict[str, str]) -> None:
    (root.parent / "proc-self-cgroup").write_text(membership)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize("membership, files, expected", [
    ("0::/\n", {}, 8),  # no quota files: the affinity
    ("0::/\n", {"cpu.max": "max 100000\n"}, 8),
    ("0::/\n", {"cpu.max": "250000 100000\n"}, 3),  # docker --cpus=2.5: rounded up
    ("0::/\n", {"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one thread
    ("0::/\n", {"cpu.max": "1600000 100000\n"}, 8),  # above the affinity: the affinity
    ("0::/\n", {"cpu.max": "garbage"}, 8),
    ("0::/\n", {"cpu.max": "nan 100000"}, 8),
    ("0::/\n", {"cpu.max": ""}, 8),
    # a host's process below the root; the limit on a parent slice binds it (regression: only
    # the process's own folder and the root were read)
    ("0::/a/b\n", {"a/cpu.max": "200000 100000", "a/b/cpu.max": "max 100000"}, 2),
    ("0::/a/b\n", {"a/b/cpu.max": "300000 100000"}, 3),
    # cgroup v1, the cpu controller mounted on its own or with cpuacct
    ("4:cpu,cpuacct:/job\n1:name=systemd:/\n",
     {"cpu/job/cpu.cfs_quota_us": "400000", "cpu/job/cpu.cfs_period_us": "100000"}, 4),
    ("4:cpuacct,cpu:/job\n", {"cpuacct,cpu/cpu.cfs_quota_us": "200000",
                              "cpuacct,cpu/cpu.cfs_period_us": "100000",
                              "cpuacct,cpu/job/cpu.cfs_quota_us": "-1",
                              "cpuacct,cpu/job/cpu.cfs_period_us": "100000"}, 2),
    ("4:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 8),
])
def test_usable_cpus_is_the_tightest_limit(host, membership, files, expected):
    place(host, membership, files)
    assert cpus.usable_cpus(host) == expected


def test_an_unreadable_membership_file_means_the_root_only(host, monkeypatch):
    place(host, "0::/a\n", {"cpu.max": "300000 100000", "a/cpu.max": "100000 100000"})
    monkeypatch.setattr(cpus, "PROC_CGROUP", host / "missing")
    assert cpus.usable_cpus(host) == 3


def test_the_environment_caps_it_and_a_bad_value_is_bad_input(host, monkeypatch):
    monkeypatch.setenv(cpus.CPUS_ENV, "3")
    assert cpus.usable_cpus(host) == 3
    monkeypatch.setenv(cpus.CPUS_ENV, "64")
    assert cpus.usable_cpus(host) == 8
    for bad in ("0", "two", "-1", "²"):
        monkeypatch.setenv(cpus.CPUS_ENV, bad)
        with pytest.raises(OptionError, match="WSI_ATM_CPUS"):
            cpus.usable_cpus(host)


def test_without_affinity_the_core_count_counts(host, monkeypatch):
    monkeypatch.delattr(cpus.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 6)
    assert cpus.usable_cpus(host) == 6
    place(host, "0::/\n", {"cpu.max": "200000 100000"})
    assert cpus.usable_cpus(host) == 2


def test_the_crop_threads_follow_the_usable_cpus(monkeypatch):
    # Regression: thread pools were sized by os.cpu_count(), the host's cores, so a 2-CPU
    # container on a 64-core node ran 8 crop threads and 64 inference threads
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(cpus, "cgroup_quota", lambda folder: 2)
    monkeypatch.delenv(cpus.CPUS_ENV, raising=False)
    assert default_workers() == 2
    from wsi_atm.batch import local_threads

    assert local_threads(2) == 1
