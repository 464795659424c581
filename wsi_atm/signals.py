"""Signal handlers shared by the console entry point and the CLI: SIGTERM raised in the main
thread as Ctrl-C is, and a late signal after the work ended exiting at once."""

from __future__ import annotations

import os
import signal
from types import FrameType

from wsi_atm.errors import Terminated


def terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def exit_now(signum: int, frame: FrameType | None) -> None:
    """A signal after the work ended: leave at once, with the status the signal means."""
    os._exit(143 if signum == signal.SIGTERM else 130)
