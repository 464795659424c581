"""User-facing errors and the one place that maps them to exit codes.

Anything the user can fix (bad path, bad file, bad option) is a ``BadInputError``
and ends the command with exit status 2 and one line on stderr. Anything else
that escapes is an internal error (exit 1).
"""

from __future__ import annotations


class WsiAtmError(Exception):
    """Base class of the errors wsi-atm reports to the user without a traceback."""

    exit_code: int = 1


class BadInputError(WsiAtmError):
    """The user's input cannot be used as given (exit status 2)."""

    exit_code = 2


class SlideError(BadInputError):
    """The slide is missing, unreadable or not a slide."""


class MppUnknownError(SlideError):
    """The slide declares no usable µm/px and none was given with --mpp."""


class DetectionsError(BadInputError):
    """The detection file is missing, malformed, of unknown format, or lacks the slide."""


class ModelError(BadInputError):
    """The model card or weight file is missing, invalid or refused (e.g. needs unpickling)."""


class OptionError(BadInputError):
    """A command-line option or configuration value is invalid."""


class OutputError(WsiAtmError):
    """A slide's outputs could not be written (a full disk, EIO, the folder made read-only or
    removed mid-run): exit status 1, none of the slide's outputs left."""


class CohortError(WsiAtmError):
    """A batch's slides are done but its cohort files could not be written (a full disk): exit
    status 1, after the slides' outcomes, which ``outcomes`` carries, have been reported."""

    def __init__(self, message: str, outcomes: list[object]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``docker stop``, ``kill``), raised in the main thread as Ctrl-C is,
    so the same clean-up runs and the process exits with a status instead of dying by signal."""
