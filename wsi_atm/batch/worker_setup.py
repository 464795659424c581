"""Preloaded into each local dask worker process (``LocalCluster(preload=...)``).

Ctrl-C in a terminal reaches the whole foreground process group: the batch's own process stops
the work and closes its workers, so the workers ignore it. Regression: each worker took it too,
and printed a KeyboardInterrupt traceback beside the batch's one-line ``wsi-atm: interrupted``;
and the task cancelled by that close was logged as a warning of distributed's state machine.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Called by distributed in the worker process as the worker starts."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)
