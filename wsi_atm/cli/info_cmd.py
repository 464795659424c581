"""``wsi-atm slide-info`` and ``wsi-atm models``: what was read, what is available."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click

from wsi_atm.cli.options import slide_options


@click.command("slide-info")
@click.argument("slide", type=click.Path(path_type=Path))
@slide_options
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def slide_info(slide: Path, mpp: float | None, backend: str, as_json: bool) -> None:
    """Show what wsi-atm reads from SLIDE: backend, levels, µm/px and its source, offsets."""
    from wsi_atm.crops import plan_crops
    from wsi_atm.slides import open_slide

    # slide-info shows slides without µm/px too (saying so); classify refuses them.
    with open_slide(slide, backend=backend, mpp=mpp, require_mpp=False) as s:
        info = s.info()
        if s.has_mpp:
            with warnings.catch_warnings():  # the plan below reports upsampling itself
                warnings.simplefilter("ignore")
                plan = plan_crops(s)
            info["crop_plan"] = {"level": plan.level, "resample_factor": plan.largest_scale,
                                 "native": plan.native, "upsampled": plan.upsampled}
        else:
            info["crop_plan"] = "unknown µm/px: pass --mpp to classify this slide"
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        if key == "properties":
            continue
        click.echo(f"{key:<20} {value}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--check-preprocess", "check", metavar="CARD", default=None,
              help="compare a hub card's linear-probe eval preprocessing with the model's own "
                   "pretrained_cfg (reads the cached hub config; exit 1 when they differ)")
def models(as_json: bool, check: str | None) -> None:
    """List the bundled model cards: name, kind, parameters, weights and where they come from."""
    from wsi_atm.models.registry import describe_cards, find_card

    if check is not None:
        from wsi_atm.models.backbone import preprocess_differences

        card = find_card(check)
        diffs = preprocess_differences(card)
        if as_json:  # Regression: --json printed the text lines
            click.echo(json.dumps({"card": card.name, "matches": not diffs,
                                   "differences": diffs}, indent=2))
        else:
            for line in diffs:
                click.echo(f"{card.name}: {line}")
            if not diffs:
                click.echo(f"{card.name}: eval preprocessing matches the model's pretrained_cfg")
        if diffs:
            raise SystemExit(1)
        return

    rows = describe_cards()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    wide = max([len("name"), *(len(r["name"]) for r in rows)])  # long names kept in line
    click.echo(f"{'name':<{wide}} {'kind':<11} {'params':>8}  {'mode':<12} {'status':<10} "
               "weights")
    for r in rows:
        params = f"{r['parameters'] / 1e6:.1f}M" if r["parameters"] else "?"
        click.echo(f"{r['name']:<{wide}} {r['kind']:<11} {params:>8}  {r['trained_mode']:<12} "
                   f"{r['status']:<10} {r['weights']}")
