"""``wsi-atm datasets``: list and download the benchmark datasets."""

from __future__ import annotations

from pathlib import Path

import click

NAMES = ("ami-br", "atnorm-br", "atnorm-md")


@click.group()
def datasets() -> None:
    """The AMi-Br benchmark datasets (AMi-Br, AtNorM-Br, AtNorM-MD)."""


@datasets.command("list")
@click.option("--dest", type=click.Path(path_type=Path), default=None,
              help="also say which datasets are installed (and verified) there")
def list_datasets(dest: Path | None) -> None:
    """Show the datasets, their expected crop counts and the pinned source."""
    from wsi_atm.train.datasets import DATASETS, DEFAULT_URL, is_installed

    for spec in DATASETS.values():
        split = f"; training split {spec.split_rows} rows" if spec.split_rows else ""
        line = (f"{spec.name:<10} {spec.counts['Atypical']:>4} atypical / "
                f"{spec.counts['Normal']:>4} normal{split}")
        if dest is not None:
            line += "  [installed]" if is_installed(dest / spec.name, spec) else "  [missing]"
        click.echo(line)
    click.echo(f"source: {DEFAULT_URL}")


@datasets.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...",
                type=click.Choice([*NAMES, "all"]))
@click.option("--dest", type=click.Path(path_type=Path), required=True,
              help="folder to lay the datasets out in (DEST/<name>/)")
@click.option("--url", default=None,
              help="archive URL (http(s)://, file://), local .zip/.tar.gz or unpacked folder "
                   "(default: the pinned upstream commit; env WSI_ATM_DATASETS_URL)")
@click.option("--force", is_flag=True, help="download and check again even if present")
@click.option("--quiet", is_flag=True, help="no progress bars")
def download(names: tuple[str, ...], dest: Path, url: str | None, force: bool,
             quiet: bool) -> None:
    """Fetch datasets, check their counts and crops, and lay them out for train/evaluate.

    NAME is ami-br, atnorm-br, atnorm-md or all; several share one download.
    """
    from wsi_atm.train.datasets import download_many

    wanted = list(NAMES) if "all" in names else list(names)
    for result in download_many(wanted, dest, url=url, force=force, quiet=quiet):
        c = result.counts
        split = f"; train {c['train']}, test {c['test']}" if "train" in c else ""
        what = (f"{c.get('Atypical', '?')} atypical / {c.get('Normal', '?')} normal{split}")
        if result.downloaded:
            click.echo(f"{result.name}: downloaded and checked ({what}): {result.path}")
        else:
            click.echo(f"{result.name}: already present and verified ({what}): {result.path}; "
                       "nothing to do (--force to redo)")
