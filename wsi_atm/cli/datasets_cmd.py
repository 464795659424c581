"""``wsi-atm datasets``: list and download the benchmark datasets."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def datasets() -> None:
    """The AMi-Br benchmark datasets (AMi-Br, AtNorM-Br, AtNorM-MD)."""


@datasets.command("list")
def list_datasets() -> None:
    """Show the datasets and the expected crop counts."""
    from wsi_atm.datasets import DATASETS, DEFAULT_URL

    for spec in DATASETS.values():
        split = f", training split {spec.split_rows}" if spec.split_rows else ""
        click.echo(f"{spec.name:<10} {spec.counts['Atypical']} atypical / "
                   f"{spec.counts['Normal']} normal{split}")
    click.echo(f"source: {DEFAULT_URL}")


@datasets.command()
@click.argument("name", type=click.Choice(["ami-br", "atnorm-br", "atnorm-md"]))
@click.option("--dest", type=click.Path(path_type=Path), required=True)
@click.option("--url", default=None,
              help="archive URL or local path (default: the pinned upstream commit; "
                   "env WSI_ATM_DATASETS_URL)")
@click.option("--force", is_flag=True, help="download and check again even if present")
@click.option("--quiet", is_flag=True)
def download(name: str, dest: Path, url: str | None, force: bool, quiet: bool) -> None:
    """Fetch a dataset, check its counts and crops, and lay it out for train/evaluate."""
    from wsi_atm.datasets import download as run

    target, done = run(name, dest, url=url, force=force, quiet=quiet)
    verb = "downloaded and checked" if done else "already present and checked; nothing to do"
    click.echo(f"{name}: {verb}: {target}")
