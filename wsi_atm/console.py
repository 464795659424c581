"""What wsi-atm prints on stderr besides errors: warnings and log records as one line each,
``wsi-atm: warning: …``, in the CLI process and in its dask worker processes alike."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

# Libraries that log at INFO to their own handlers (a local dask cluster: two dozen lines a
# batch) are held to warnings; tifffile's complaints about a damaged file are warnings too,
# said once, as wsi-atm carries on or fails with its own error.
QUIET = ("distributed", "dask", "tornado", "bokeh")
# Set in the environment of the local dask workers wsi-atm starts, which inherit it: their
# console is wsi-atm's (a user's own --scheduler workers are left as they are).
LOCAL_WORKER_ENV = "WSI_ATM_LOCAL_WORKER"


class _NotComputeFailed(logging.Filter):
    """A task's failure is reported once, by the batch, as that slide's one line; a worker's
    multi-line "Compute Failed" record with its traceback would repeat it. Only that record
    is held back: the worker's memory warnings and the rest still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


class _OnceAsWarning(logging.Filter):
    """tifffile's records as warnings, each message once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("tifffile"):
            message = record.getMessage()
            if message in self._seen:
                return False
            self._seen.add(message)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def say(text: str) -> None:
    """One line on stderr, at best: a stderr that cannot take it (closed, on a full device, a
    pipe whose reader is gone) neither fails the work nor changes the exit status, as with
    Python's own warning printer. Regression: a warning that could not be printed failed the
    slide (every slide of a batch), and an error line turned exit status 2 into 1."""
    stream = sys.stderr
    if stream is None:  # started with stderr closed: print(file=None) would write to stdout
        return
    with contextlib.suppress(OSError, ValueError):  # ValueError: the stream was closed
        print(text, file=stream, flush=True)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    say(f"wsi-atm: warning: {message}")


def setup_console() -> None:
    """One line per warning or log record on stderr, ``wsi-atm: <level>: <message>``."""
    import warnings

    warnings.showwarning = _show_warning
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host program's own set-up stays
        handler = logging.StreamHandler()
        handler.setFormatter(_LowerLevelFormatter("wsi-atm: %(levelname)s: %(message)s"))
        handler.addFilter(_OnceAsWarning())
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "HF_HUB_VERBOSITY" not in os.environ:
        # huggingface_hub warns of each retry of an unreachable Hub, twice (its own handler,
        # then ours): a dozen lines over 23 s before wsi-atm's one-line error. Read at its
        # import; its logger's level is set too in case it is imported already
        os.environ["HF_HUB_VERBOSITY"] = "error"
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    worker = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _NotComputeFailed) for f in worker.filters):
        worker.addFilter(_NotComputeFailed())
