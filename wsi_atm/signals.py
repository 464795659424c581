"""Signal handlers shared by the console entry point and the CLI: SIGTERM and SIGHUP raised in
the main thread as Ctrl-C is, and a late signal after the work ended exiting at once."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from wsi_atm.console import say
from wsi_atm.errors import Terminated


class HungUp(Terminated):
    """SIGHUP: the terminal went away (an ssh session dropped). Regression: it killed the
    process by signal, mid-slide or mid-batch, as nothing else did but SIGKILL."""


# Stopped as Ctrl-C is. SIGHUP only where it is not ignored: under nohup it stays ignored
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def terminate(signum: int, frame: FrameType | None) -> None:
    raise HungUp() if signum == signal.SIGHUP else Terminated()


def take_hangup(handler: Any) -> Any:
    """Install ``handler`` for SIGHUP unless it is ignored; returns the one it replaced."""
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        return None
    return signal.signal(signal.SIGHUP, handler)


def exit_now(signum: int, frame: FrameType | None) -> None:
    """A signal after the work ended: leave at once, with the status the signal means (what
    was printed is flushed first: os._exit does not)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(128 + signum)  # 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP


def stopped(exc: BaseException) -> int:
    """Say why the run stopped and return its status: 143 for SIGTERM, 129 for SIGHUP, 130 for
    Ctrl-C (also when wrapped, as click wraps KeyboardInterrupt in Abort)."""
    cause = exc.__cause__ or exc.__context__
    for kind, word, status in ((HungUp, "hung up", 129), (Terminated, "terminated", 143)):
        if isinstance(exc, kind) or isinstance(cause, kind):
            say(f"wsi-atm: {word}")
            return status
    say("wsi-atm: interrupted")
    return 130


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP over a C extension's import, delivering them when it ends.
    Regression: onnxruntime's module init turned a KeyboardInterrupt raised inside it into
    ``ImportError: initialization failed``, taken for a damaged graph cache: the run went on to
    the end (exit 0) after the Ctrl-C, and the cached graph was deleted and rebuilt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved: dict[int, Any] = {}
    for sig in STOP_SIGNALS:
        if callable(signal.getsignal(sig)):  # Python handlers only: SIG_IGN, SIG_DFL stay
            saved[sig] = signal.signal(sig, lambda n, f: caught.append(n))
    try:
        yield
    finally:
        for held, handler in saved.items():
            signal.signal(held, handler)
        for num in dict.fromkeys(caught):
            signal.raise_signal(num)  # now the usual handler raises it


# The tracker's own warning at its exit when a worker it served was killed (the batch closing
# busy workers after a stop, the OOM killer): it removes what they left all the same
TRACKER_QUIET = "ignore:resource_tracker:UserWarning"


def _start_tracker(resource_tracker: Any) -> None:
    """Start multiprocessing's resource tracker with its leak warning silenced. Regression: a
    batch --workers N stopped mid-slide (``docker stop``, ``kill``) or losing a worker ended
    its stderr with that raw warning and its source line, "There appear to be 2 leaked
    semaphore objects"; the warning goes through the tracker's own interpreter, which reads
    PYTHONWARNINGS only when it starts."""
    saved = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(w for w in (saved, TRACKER_QUIET) if w)
    try:
        resource_tracker.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = saved


@contextlib.contextmanager
def group_signals_spared() -> Iterator[None]:
    """Start child processes (local dask workers, multiprocessing's resource tracker) with
    SIGHUP and SIGINT blocked, as they inherit this thread's signal mask: a closing terminal,
    or Ctrl-C in it, sends them to every process of its group, and this process alone stops
    the work and closes the workers. Here they are delivered when the block ends.
    Regressions: a hang-up killed the workers and the resource tracker by signal; the tracker,
    relaunched, printed "Some resources might leak" and a KeyError traceback for each semaphore
    its predecessor had registered. A Ctrl-C while the workers started reached a worker before
    its preload ignored SIGINT (a KeyboardInterrupt traceback), and this process inside the
    cluster's start (a traceback from distributed's exit handler closing a half-made cluster)."""
    if (threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "pthread_sigmask")):
        yield
        return
    from multiprocessing import resource_tracker

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        # started here, not inside the block below: starting it unblocks SIGINT (and SIGTERM)
        # in the calling thread, which let Ctrl-C reach the workers started after it
        _start_tracker(resource_tracker)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
