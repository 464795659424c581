"""Signal handlers shared by the console entry point and the CLI: SIGTERM raised in the main
thread as Ctrl-C is, and a late signal after the work ended exiting at once."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from wsi_atm.errors import Terminated


def terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def exit_now(signum: int, frame: FrameType | None) -> None:
    """A signal after the work ended: leave at once, with the status the signal means (what
    was printed is flushed first: os._exit does not)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(143 if signum == signal.SIGTERM else 130)


def stopped(exc: BaseException) -> int:
    """Say why the run stopped and return its status: 143 for SIGTERM, 130 for Ctrl-C (also
    when wrapped, as click wraps KeyboardInterrupt in Abort)."""
    cause = exc.__cause__ or exc.__context__
    term = isinstance(exc, Terminated) or isinstance(cause, Terminated)
    print(f"wsi-atm: {'terminated' if term else 'interrupted'}", file=sys.stderr)
    return 143 if term else 130


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM over a C extension's import, delivering them when it ends.
    Regression: onnxruntime's module init turned a KeyboardInterrupt raised inside it into
    ``ImportError: initialization failed``, taken for a damaged graph cache: the run went on to
    the end (exit 0) after the Ctrl-C, and the cached graph was deleted and rebuilt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if callable(signal.getsignal(sig)):  # Python handlers only: SIG_IGN, SIG_DFL stay
            saved[sig] = signal.signal(sig, lambda n, f: caught.append(n))
    try:
        yield
    finally:
        for held, handler in saved.items():
            signal.signal(held, handler)
        for num in dict.fromkeys(caught):
            signal.raise_signal(num)  # now the usual handler raises it
