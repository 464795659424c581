"""Crop datasets: the AMi-Br layout (folders + ``amibr_train_split.csv``) or plain class folders."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsi_atm.errors import BadInputError
from wsi_atm.train.tables import read_rows

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
    # Why ``soft`` is None although the CSV has vote columns ("" otherwise).
    votes_problem: str = ""

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
            votes_problem=self.votes_problem,
        )


def load_dataset(root: str | Path, size: int | None = None) -> CropDataset:
    """Read ``root/{Atypical,Normal}/*.png``; groups from ``amibr_train_split.csv`` when present."""
    root = Path(root)
    if not all((root / c).is_dir() for c in CLASSES):
        raise BadInputError(f"{root}: expected sub-folders {' and '.join(CLASSES)} of crops")
    rows = _csv_rows(root)
    # Hidden files are not crops. Regression: macOS's AppleDouble files (``._A0.png``, left on
    # drives and shares it copies to) carry the crop's extension and stopped the dataset.
    found = [(c, p.name, "") for c in CLASSES for p in sorted((root / c).iterdir())
             if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")
             and not p.name.startswith(".")]
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
    keep = _without_repeats(root, [f"{c}/{name}" for c, name, _ in entries], images)
    if len(keep) < len(entries):
        entries, images = [entries[i] for i in keep], images[keep]
        rows = None if rows is None else [rows[i] for i in keep]
    soft, votes_problem = _expert_share(rows) if rows is not None else (None, "")
    labels = np.array([1 if c == "Atypical" else 0 for c, _, _ in entries], dtype=np.int64)
    groups = np.array([g for _, _, g in entries]) if rows is not None else None
    return CropDataset(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        labels=labels,
        groups=groups,
        names=[f"{c}/{name}" for c, name, _ in entries],
        root=root,
        soft=soft,
        columns=_metadata_columns(rows) if rows is not None else {},
        votes_problem=votes_problem,
    )


def _without_repeats(root: Path, names: list[str], images: np.ndarray) -> list[int]:
    """The crops to use: each distinct image once. Regression: a copy (or link) of a crop was
    scored twice and could be trained on in one fold and scored in another; under the other
    label it was one crop with two answers. The same pixels under both labels are refused;
    further copies under one label are left out, with a warning."""
    first: dict[bytes, int] = {}
    keep: list[int] = []
    for k, image in enumerate(images):
        key = hashlib.sha256(image.tobytes()).digest()
        seen = first.setdefault(key, k)
        if seen == k:
            keep.append(k)
        elif names[seen].split("/")[0] != names[k].split("/")[0]:
            raise BadInputError(f"{root}: {names[k]} and {names[seen]} are the same crop "
                                "under both labels; remove the wrong one")
    if len(keep) < len(images):
        used = set(keep)
        copy = next(k for k in range(len(images)) if k not in used)
        log.warning("%s: %d crops are copies of another crop of their class (first: %s); "
                    "each image is used once", root, len(images) - len(keep), names[copy])
    return keep


def require_both_classes(data: CropDataset, why: str) -> None:
    """Refuse a dataset whose crops are all of one class: ``why`` says what needs both."""
    if len(set(data.labels.tolist())) < 2:
        only = "atypical" if data.labels[0] else "normal"
        raise BadInputError(f"{data.root}: every crop is {only}: {why}")


EXPERT_VOTES = ("expert1_atypical", "expert2_atypical", "expert3_atypical")
_VOTES = {"true": True, "1": True, "1.0": True, "yes": True,
          "false": False, "0": False, "0.0": False, "no": False}


def _expert_share(rows: list[dict[str, str]]) -> tuple[np.ndarray | None, str]:
    """Share of expert votes for "atypical" per crop, or None when the CSV has no votes or a
    vote cell that is not true/false (then also what is wrong: ``--soft-labels`` refuses with
    it). Regression: any cell but true/1/yes (a blank, "Y", pandas' "1.0") was a vote for
    normal."""
    if not rows or not all(k in rows[0] for k in EXPERT_VOTES):
        return None, ""
    votes = [[_VOTES.get(r[k].strip().lower()) for k in EXPERT_VOTES] for r in rows]
    for row, vote in zip(rows, votes, strict=True):
        for column, value in zip(EXPERT_VOTES, vote, strict=True):
            if value is None:
                return None, (f"{column} of {row['dataset_uid']} is {row[column]!r}, not true "
                              "or false")
    shares: np.ndarray = np.asarray(votes, dtype=np.float32).mean(axis=1)
    return shares, ""


def _metadata_columns(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    keep = [k for k in (rows[0] if rows else {}) if k and k not in EXPERT_VOTES]
    return {k: np.array([r[k] for r in rows]) for k in keep}


def _csv_rows(root: Path) -> list[dict[str, str]] | None:
    path = root / AMIBR_CSV
    if not path.is_file():
        return None
    rows = read_rows(path)
    missing = {"slide", "final_label", "dataset_uid"} - set(rows[0] if rows else {})
    if missing:
        raise BadInputError(f"{path}: missing columns {', '.join(sorted(missing))}")
    _check_rows(path, rows)
    present = [r for r in rows if (root / r["final_label"] / r["dataset_uid"]).is_file()]
    if len(present) < len(rows):
        raise BadInputError(
            f"{path}: {len(rows) - len(present)} listed crops are missing from the class folders"
        )
    return present


def _check_rows(path: Path, rows: list[dict[str, str]]) -> None:
    """Each row one crop of a class folder, listed once, as ``datasets download`` checks it.
    Regression: a label other than Atypical (an extra folder) was read as normal, a name with
    a folder in it could point into the other class, and a row listed twice was a crop counted
    twice."""
    seen: set[tuple[str, str]] = set()
    for r in rows:
        label, name = r["final_label"], r["dataset_uid"]
        if label not in CLASSES:
            raise BadInputError(f"{path}: final_label {label!r} (of {name!r}) is not one of "
                                f"{', '.join(CLASSES)}")
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise BadInputError(f"{path}: dataset_uid {name!r} is not a file name in {label}/")
        if (label, name) in seen:
            raise BadInputError(f"{path}: {label}/{name} is listed twice")
        seen.add((label, name))


def _read(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width != height:  # Regression: stretched square silently, mitosis and all
                raise BadInputError(f"{path}: a crop must be square, found {width}×{height}")
            im = _as_rgb(opened, path)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    # Regression: a damaged header (dimensions beyond Pillow's bomb limit, a TIFF tile outside
    # the image) was an internal error; the same errors as ``datasets download`` checks
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"{path}: cannot read image ({exc})") from None


def _as_rgb(im: Image.Image, path: Path) -> Image.Image:
    """The crop as 8-bit RGB. Regression: Pillow converts 16-bit grey by clipping at 255, so
    such crops were read as white (and the model learnt it); 32-bit integer and float samples
    have no known range to scale from."""
    if im.mode.startswith("I;16") or (im.mode == "I" and _sixteen_bit(im)):
        grey = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if im.mode in ("I", "F"):
        kind = "32-bit integer" if im.mode == "I" else "floating-point"
        raise BadInputError(f"{path}: {kind} samples have no known range; save the crop as "
                            "8-bit RGB")
    return im.convert("RGB")


def _sixteen_bit(im: Image.Image) -> bool:
    """Whether a 32-bit integer ("I") image holds 16-bit samples: some Pillow versions open
    16-bit grey PNGs so (PNG has no wider samples), and a TIFF says so in BitsPerSample."""
    if im.format == "PNG":
        return True
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    return bits in (16, (16,))
