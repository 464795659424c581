"""Fault injection for the fault-tolerance tests: ``WSI_ATM_FAULT=<stage>[:<kind>[:<n>]]``.

Makes the n-th call (default 1) of one pipeline stage fail, so tests can check in a subprocess
that every failure ends cleanly (an exit status, never a signal death; nothing half-written).
Stages: ``open`` (opening the slide), ``detections`` (reading the detector file), ``crop``
(a crop read, in a reader thread), ``inference`` (a batch forward pass), ``write`` (after the
first output file is written). Kinds: ``error`` (RuntimeError), ``interrupt`` (SIGINT to
this process, as Ctrl-C would), ``terminate`` (SIGTERM, as ``kill`` or ``docker stop``
would) or ``hangup`` (SIGHUP, as a closed terminal would). Unset, it costs one dictionary
lookup per call.
"""

from __future__ import annotations

import os
import signal
import threading

STAGES = ("open", "detections", "crop", "inference", "write")
_calls: dict[str, int] = {}
_lock = threading.Lock()


class InjectedFault(RuntimeError):
    """The error an ``error`` fault raises."""


def inject(stage: str) -> None:
    spec = os.environ.get("WSI_ATM_FAULT")
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != stage:
        return
    kind, _, nth = rest.partition(":")
    with _lock:
        _calls[stage] = _calls.get(stage, 0) + 1
        if _calls[stage] != int(nth or 1):
            return
    sent = {"interrupt": signal.SIGINT, "terminate": signal.SIGTERM, "hangup": signal.SIGHUP}
    if kind in sent:
        os.kill(os.getpid(), sent[kind])
        return
    raise InjectedFault(f"injected fault at stage {stage!r}")
