"""The console: an unreachable Hub is one line, wsi-atm's error, not a dozen retry warnings."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import logging
import huggingface_hub  # imported before the console is set up, as train does
from wsi_atm.console import setup_console
setup_console()
logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
logging.getLogger("wsi_atm").warning("still shown")
"""


def test_hub_retry_warnings_are_not_printed():
    # Regression: with no network and HF_HUB_OFFLINE unset, each of huggingface_hub's five
    # retries was printed twice (its own stderr handler, then wsi-atm's) over 23 s, before
    # wsi-atm's one-line error
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_VERBOSITY"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Retrying" not in done.stderr
    assert "wsi-atm: warning: still shown" in done.stderr
