"""The console entry point, kept apart from the CLI so that the signals are taken over before
click, numpy and the rest are imported: a Ctrl-C during those imports (or during the
interpreter's shutdown after the work is done) used to end in a traceback and death by signal.
"""

from __future__ import annotations

import atexit
import signal
import sys

from wsi_atm.signals import exit_now, stopped, take_hangup, terminate

TEARDOWN_WATCHDOG_S = 30


def ignore_late_signals() -> None:
    """The interpreter's last exit handler: from here on it tears down, and on the way it
    puts every signal with a Python handler back to the default, death by signal, before the
    modules and native libraries are freed (~0.1 s). An ignored signal stays ignored, so for
    that last stretch the status already decided stands. Regression: a Ctrl-C or SIGTERM there
    killed the process by signal (7 of 30 signals sent in a run's last second)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # with both ignored, a teardown stuck in a native destructor (a slide on a stalled
    # network mount) could not be stopped but by SIGKILL: a watchdog ends it instead
    signal.alarm(TEARDOWN_WATCHDOG_S)


def run() -> None:
    """``wsi-atm``: the CLI, with SIGTERM and SIGHUP handled like Ctrl-C and a late signal
    exiting at once."""
    atexit.unregister(ignore_late_signals)
    atexit.register(ignore_late_signals)  # registered first, so it runs last
    signal.signal(signal.SIGTERM, terminate)
    take_hangup(terminate)
    try:
        from wsi_atm.cli import main

        main()
    except KeyboardInterrupt as exc:  # before main's own handling began
        sys.exit(stopped(exc))
    finally:
        # The outputs are complete or abandoned by now: a late signal must not turn the exit
        # into a death by signal (or a traceback) while the interpreter shuts down, nor be
        # ignored should the shutdown hang (a reader stuck on a stalled network mount); after
        # the last exit handler, see ignore_late_signals.
        signal.signal(signal.SIGINT, exit_now)
        signal.signal(signal.SIGTERM, exit_now)
        take_hangup(exit_now)

