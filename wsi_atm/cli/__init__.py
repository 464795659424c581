"""The ``wsi-atm`` command: a click group whose subcommands stay thin.

Errors the user can fix end with one line on stderr and exit status 2; anything unexpected
gets exit status 1 and a line saying where it happened (``WSI_ATM_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback

import click

from wsi_atm import __version__
from wsi_atm.console import say, setup_console
from wsi_atm.cpus import env_limit
from wsi_atm.errors import WsiAtmError
from wsi_atm.signals import stopped, take_hangup, terminate


class _NeverRaised(click.ClickException):
    pass


# click 8.2 raises this for a bare group; click 8.1 has no such class (and shows the help itself)
NO_ARGS_HELP: type[click.ClickException] = getattr(click.exceptions, "NoArgsIsHelpError",
                                                   _NeverRaised)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsi-atm")
def cli() -> None:
    """Classify mitotic figures in whole-slide images as atypical or normal."""


def _register() -> None:
    from wsi_atm.cli import (
        batch_cmd,
        classify_cmd,
        datasets_cmd,
        evaluate_cmd,
        info_cmd,
        train_cmd,
    )

    cli.add_command(batch_cmd.batch)
    cli.add_command(classify_cmd.classify)
    cli.add_command(datasets_cmd.datasets)
    cli.add_command(evaluate_cmd.evaluate)
    cli.add_command(evaluate_cmd.results)
    cli.add_command(info_cmd.slide_info)
    cli.add_command(info_cmd.models)
    cli.add_command(train_cmd.train)


def main(argv: list[str] | None = None) -> None:
    _register()
    setup_console()
    on_term = on_hup = None
    if threading.current_thread() is threading.main_thread():
        on_term = signal.signal(signal.SIGTERM, terminate)
        on_hup = take_hangup(terminate)
    try:
        env_limit()  # a bad $WSI_ATM_CPUS is reported before any work, not mid-batch
        cli.main(args=argv, prog_name="wsi-atm", standalone_mode=False)
    except WsiAtmError as exc:
        say(f"wsi-atm: error: {exc}")
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:  # Abort: click's Ctrl-C
        sys.exit(stopped(exc))
    except NO_ARGS_HELP as exc:  # bare `wsi-atm`: the help, not an error
        click.echo(exc.format_message())
        sys.exit(0)
    except click.ClickException as exc:
        say(f"wsi-atm: error: {exc.format_message()}")
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # internal error: say where, exit 1
        if isinstance(exc.__context__, KeyboardInterrupt):  # raised while stopping: click's
            sys.exit(stopped(exc.__context__))  # line for Ctrl-C met a stderr it cannot write
        if os.environ.get("WSI_ATM_DEBUG") and sys.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                traceback.print_exc()
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}"
        say(f"wsi-atm: internal error ({type(exc).__name__} at {where}): {exc}")
        sys.exit(1)
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
        if on_hup is not None:
            signal.signal(signal.SIGHUP, on_hup)
