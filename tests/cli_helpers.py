"""Run the wsi-atm command in-process and get its exit status."""

from __future__ import annotations

from wsi_atm.cli import main


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
