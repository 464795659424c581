"""The console entry point, kept apart from the CLI so that the signals are taken over before
click, numpy and the rest are imported: a Ctrl-C during those imports (or during the
interpreter's shutdown after the work is done) used to end in a traceback and death by signal.
"""

from __future__ import annotations

import signal
import sys

from wsi_atm.signals import exit_now, stopped, terminate


def run() -> None:
    """``wsi-atm``: the CLI, with SIGTERM handled like Ctrl-C and a late signal exiting at once."""
    signal.signal(signal.SIGTERM, terminate)
    try:
        from wsi_atm.cli import main

        main()
    except KeyboardInterrupt as exc:  # before main's own handling began
        sys.exit(stopped(exc))
    finally:
        # The outputs are complete or abandoned by now: a late signal must not turn the exit
        # into a death by signal (or a traceback) while the interpreter shuts down, nor be
        # ignored should the shutdown hang (a reader stuck on a stalled network mount).
        signal.signal(signal.SIGINT, exit_now)
        signal.signal(signal.SIGTERM, exit_now)

