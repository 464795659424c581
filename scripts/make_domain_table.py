"""Derive the slide → acquisition-domain table bundled as ``wsi_atm/train/amibr_domains.csv``.

MIDOG21 slides of the AMi-Br training split (``002.tiff`` …) are looked up by number in MIDOG++'s
``datasets_xvalidation.csv`` (CC0) for their scanner; TUPAC16 slides form one domain of their own.
Usage: python scripts/make_domain_table.py ../shared/data/amibr-train/amibr_train_split.csv \
    ../shared/data/midogpp/datasets_xvalidation.csv wsi_atm/train/amibr_domains.csv
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

# MIDOG++ spells one scanner "Hamammatsu"; the table uses the vendor's spelling.
SPELLING = {"Hamammatsu XR": "Hamamatsu XR", "Hamammatsu S360": "Hamamatsu S360"}


def scanner_by_number(xval: Path) -> dict[int, str]:
    with open(xval, newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh, delimiter=";")
        return {int(r["Slide"]): SPELLING.get(r["Scanner"], r["Scanner"]) for r in rows}


def domain_rows(split: Path, xval: Path) -> list[tuple[str, str, str]]:
    scanners = scanner_by_number(xval)
    seen: dict[str, tuple[str, str, str]] = {}
    with open(split, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            slide, dataset = r["slide"], r["dataset"]
            if slide in seen:
                continue
            if dataset == "MIDOG21":
                scanner = scanners[int(Path(slide).stem)]
            elif dataset == "TUPAC16":
                scanner = "TUPAC16"  # one group: TUPAC16 names no scanner per slide
            else:
                raise SystemExit(f"unknown dataset {dataset!r} for slide {slide}")
            seen[slide] = (slide, dataset, scanner)
    return sorted(seen.values())


def main(argv: list[str]) -> None:
    split, xval, out = (Path(a) for a in argv)
    rows = domain_rows(split, xval)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["slide", "dataset", "scanner"])
        w.writerows(rows)
    print(f"{out}: {len(rows)} slides")


if __name__ == "__main__":
    main(sys.argv[1:])
