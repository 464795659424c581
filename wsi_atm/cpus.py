"""How many CPUs this process may really use: its affinity (taskset, a Slurm or Kubernetes
cpuset), the CPU quota of its cgroup and every cgroup above it (``docker --cpus``, a Kubernetes
CPU limit, a systemd ``CPUQuota=``), and ``$WSI_ATM_CPUS`` where set — not the host's core
count that ``os.cpu_count()`` reports. Thread pools sized by the host's count oversubscribe a
4-CPU container on a 64-core node sixteen-fold."""

from __future__ import annotations

import math
import os
from pathlib import Path

from wsi_atm.errors import OptionError

CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
CPUS_ENV = "WSI_ATM_CPUS"  # an upper bound, e.g. one local dask worker's share of the CPUs


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may run on at once (at least 1)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        allowed = os.cpu_count() or 1
    quotas = [q for q in (cgroup_quota(d) for d in cgroup_dirs(cgroup)) if q is not None]
    return max(1, min([allowed, *quotas, *env_limit()]))


def env_limit() -> list[int]:
    """``[$WSI_ATM_CPUS]`` where set (checked: a bad value is bad input), else ``[]``."""
    text = os.environ.get(CPUS_ENV, "").strip()
    if not text:
        return []
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise OptionError(f"${CPUS_ENV} must be a whole number of CPUs, at least 1, not {text!r}")
    return [int(text)]


def cgroup_dirs(cgroup: Path = CGROUP) -> list[Path]:
    """The cgroup folders whose CPU quota binds this process: its own and every one above it,
    for cgroup v2 (``0::/path``) and for v1's cpu controller (``N:cpu,cpuacct:/path``, mounted
    at ``cpu`` or ``cpu,cpuacct``). Inside a container its own cgroup is the mount's root."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except (OSError, ValueError):
        return [cgroup]
    found: list[Path] = []
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":
            mounts = [cgroup]
        elif "cpu" in controllers.split(","):
            mounts = [m for m in (cgroup / "cpu", cgroup / controllers) if m.is_dir()][:1]
        else:
            continue
        for mount in mounts:
            own = mount / path.strip().lstrip("/")
            found += [own, *(p for p in own.parents if p.is_relative_to(mount) and p != own)]
    return list(dict.fromkeys(found)) or [cgroup]


def cgroup_quota(folder: Path) -> int | None:
    """The CPU quota set on one cgroup folder in whole CPUs (rounded up), or None if unlimited
    or unknown. cgroup v2: ``cpu.max`` ("max 100000" or "QUOTA PERIOD"); v1:
    ``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``."""
    try:
        fields = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            fields = [(folder / name).read_text().strip()
                      for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
        except (OSError, ValueError):
            return None
    try:
        quota, period = (float(v) for v in fields[:2])
    except ValueError:  # "max", empty or one field: no quota
        return None
    if not (math.isfinite(quota) and math.isfinite(period)) or quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))
