"""How many CPUs this process may really use: its affinity (taskset, a Slurm or Kubernetes
cpuset) and its cgroup CPU quota (``docker --cpus``, a Kubernetes CPU limit), not the host's
core count that ``os.cpu_count()`` reports. Thread pools sized by the host's count oversubscribe
a 4-CPU container on a 64-core node sixteen-fold."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may run on at once (at least 1)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        allowed = os.cpu_count() or 1
    quotas = [q for q in (cgroup_quota(d) for d in _cgroup_dirs(cgroup)) if q is not None]
    return max(1, min([allowed, *quotas]))


def _cgroup_dirs(cgroup: Path) -> list[Path]:
    """The cgroup v2 folder of this process (a host's process sits below the root; a
    container's root is its own), then the root itself."""
    try:
        line = next(v for v in Path("/proc/self/cgroup").read_text().splitlines()
                    if v.startswith("0::"))
        own = cgroup / line[3:].strip().lstrip("/")
    except (OSError, StopIteration):
        return [cgroup]
    return [own, cgroup] if own != cgroup else [cgroup]


def cgroup_quota(cgroup: Path = CGROUP) -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), or None if unlimited
    or unknown. cgroup v2: ``cpu.max`` ("max 100000" or "QUOTA PERIOD"); v1:
    ``cpu/cpu.cfs_quota_us`` (-1: none) over ``cpu/cpu.cfs_period_us``."""
    try:
        fields = (cgroup / "cpu.max").read_text().split()
    except OSError:
        try:
            fields = [(cgroup / "cpu" / name).read_text().strip()
                      for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
        except OSError:
            return None
    try:
        quota, period = (float(v) for v in fields[:2])
    except ValueError:  # "max": no quota
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))
