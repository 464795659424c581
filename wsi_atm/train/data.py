"""Crop datasets: the AMi-Br layout (folders + ``amibr_train_split.csv``) or plain class folders."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsi_atm.errors import BadInputError

log = logging.getLogger("wsi_atm.train")
CLASSES = ("Atypical", "Normal")
AMIBR_CSV = "amibr_train_split.csv"


@dataclass
class CropDataset:
    """All crops of a dataset in memory: uint8 NCHW images, label 1 = atypical."""

    images: torch.Tensor
    labels: np.ndarray
    groups: np.ndarray | None  # slide of each crop (folds never split a slide)
    names: list[str]
    root: Path
    # Share of the experts who called each crop atypical (AMi-Br's three votes); None = unknown.
    soft: np.ndarray | None = None
    # Per-crop metadata columns from the split CSV (e.g. "dataset"), for grouped validation.
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: np.ndarray) -> CropDataset:
        return CropDataset(
            images=self.images[torch.as_tensor(idx)],
            labels=self.labels[idx],
            groups=None if self.groups is None else self.groups[idx],
            names=[self.names[i] for i in idx],
            root=self.root,
            soft=None if self.soft is None else self.soft[idx],
            columns={k: v[idx] for k, v in self.columns.items()},
        )


def load_dataset(root: str | Path, size: int | None = None) -> CropDataset:
    """Read ``root/{Atypical,Normal}/*.png``; groups from ``amibr_train_split.csv`` when present."""
    root = Path(root)
    if not all((root / c).is_dir() for c in CLASSES):
        raise BadInputError(f"{root}: expected sub-folders {' and '.join(CLASSES)} of crops")
    rows = _csv_rows(root)
    found = [(c, p.name, "") for c in CLASSES for p in sorted((root / c).iterdir())
             if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")]
    if rows is not None:
        entries = [(r["final_label"], r["dataset_uid"], r["slide"]) for r in rows]
        listed = {(c, name) for c, name, _ in entries}
        unlisted = sum((c, name) not in listed for c, name, _ in found)
        if unlisted:  # Regression: they were left out without a word
            log.warning("%s: %d crops in the class folders are not in %s and are left out",
                        root, unlisted, AMIBR_CSV)
    else:
        entries = found
    if not entries:
        raise BadInputError(f"{root}: no crops found")
    images = np.stack([_read(root / c / name, size) for c, name, _ in entries])
    labels = np.array([1 if c == "Atypical" else 0 for c, _, _ in entries], dtype=np.int64)
    groups = np.array([g for _, _, g in entries]) if rows is not None else None
    return CropDataset(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        labels=labels,
        groups=groups,
        names=[f"{c}/{name}" for c, name, _ in entries],
        root=root,
        soft=_expert_share(rows) if rows is not None else None,
        columns=_metadata_columns(rows) if rows is not None else {},
    )


EXPERT_VOTES = ("expert1_atypical", "expert2_atypical", "expert3_atypical")
_TRUE = {"true", "1", "yes"}


def _expert_share(rows: list[dict[str, str]]) -> np.ndarray | None:
    """Share of expert votes for "atypical" per crop, or None when the CSV has no votes."""
    if not rows or not all(k in rows[0] for k in EXPERT_VOTES):
        return None
    votes = [[r[k].strip().lower() in _TRUE for k in EXPERT_VOTES] for r in rows]
    shares: np.ndarray = np.asarray(votes, dtype=np.float32).mean(axis=1)
    return shares


def _metadata_columns(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    keep = [k for k in (rows[0] if rows else {}) if k and k not in EXPERT_VOTES]
    return {k: np.array([r[k] for r in rows]) for k in keep}


def _csv_rows(root: Path) -> list[dict[str, str]] | None:
    path = root / AMIBR_CSV
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"slide", "final_label", "dataset_uid"} - set(rows[0] if rows else {})
    if missing:
        raise BadInputError(f"{path}: missing columns {', '.join(sorted(missing))}")
    present = [r for r in rows if (root / r["final_label"] / r["dataset_uid"]).is_file()]
    if len(present) < len(rows):
        raise BadInputError(
            f"{path}: {len(rows) - len(present)} listed crops are missing from the class folders"
        )
    return present


def _read(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            im = opened.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read image ({exc})") from None
