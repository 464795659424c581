"""The benchmark datasets wsi-atm knows: where each lies in the upstream archive, what it holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

UPSTREAM_REPO = "DeepMicroscopy/AMi-Br_Benchmark"
UPSTREAM_COMMIT = "3acf4dad662ed71b63f283858892b54c84a49696"
DEFAULT_URL = f"https://github.com/{UPSTREAM_REPO}/archive/{UPSTREAM_COMMIT}.zip"
URL_ENV = "WSI_ATM_DATASETS_URL"
CLASSES = ("Atypical", "Normal")
CROP_SIZE = 128
RECORD = "DATASET.json"
TMP_PREFIX = ".wsi-atm-"
LFS_MAGIC = b"version https://git-lfs"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lies in the archive and what it must hold."""

    name: str  # the folder written under DEST
    folder: str  # the dataset's directory name in the archive (case, '-', '_' ignored)
    counts: Mapping[str, int]  # crops per class in the whole dataset
    split_csv: str = ""  # AMi-Br: the training split; the test split is its complement
    split_rows: int = 0  # rows expected in split_csv (0: not checked)
    extra_files: tuple[str, ...] = field(default_factory=tuple)  # copied along when present


DATASETS: dict[str, DatasetSpec] = {
    "ami-br": DatasetSpec("ami-br", "AMi-Br", {"Atypical": 832, "Normal": 2888},
                          split_csv="amibr_train_split.csv", split_rows=2894),
    "atnorm-br": DatasetSpec("atnorm-br", "AtNorM-Br", {"Atypical": 128, "Normal": 618}),
    "atnorm-md": DatasetSpec("atnorm-md", "AtNorM-MD", {"Atypical": 219, "Normal": 1888},
                             extra_files=("AtNorM-MD_expert_votes.csv",)),
}


@dataclass(frozen=True)
class Crop:
    cls: str  # Atypical or Normal
    name: str  # file name
    member: str  # path in the archive
    subset: str  # sub-folder between the dataset folder and the class folder ('' if none)


@dataclass(frozen=True)
class DownloadResult:
    name: str
    path: Path
    downloaded: bool  # False: already present and verified, nothing done
    counts: dict[str, int]

