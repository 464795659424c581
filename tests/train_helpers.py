"""Small crop folders and model cards for training and evaluation tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

TINY_CARD = """
name = "tiny-test"
description = "a tiny resnet for tests"
kind = "cnn"
status = "untrained"
trained_mode = "end-to-end"
batch_size = 16

[architecture]
name = "resnet10t"
pretrained = "none"

[input]
crop_size = 32
model_size = 32
mpp = 0.25

[labels]
output = "p_atypical"

[preprocess.end-to-end]
train = [{ op = "hflip" }, { op = "rot90" }]
eval = []
"""


def write_tiny_card(folder: Path, text: str = TINY_CARD) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny-test.toml"
    path.write_text(text)
    return path


def write_synthetic_crops(
    root: Path, n_atypical: int = 12, n_normal: int = 20, size: int = 32, slides: int = 8,
    seed: int = 0,
) -> Path:
    """Class folders of learnable crops (atypical: dark blob; normal: faint) + an AMi-Br CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls, n in (("Atypical", n_atypical), ("Normal", n_normal)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(180, 240, size=(size, size, 3)).astype(np.uint8)
            c = size // 2
            r = size // 4
            yy, xx = np.ogrid[:size, :size]
            blob = (yy - c) ** 2 + (xx - c) ** 2 < r * r
            img[blob] = (60, 30, 90) if cls == "Atypical" else (170, 140, 190)
            name = f"{cls[0]}{i}.png"
            Image.fromarray(img).save(root / cls / name)
            rows.append({"slide": f"s{i % slides}.tiff", "final_label": cls, "dataset_uid": name})
    with open(root / "amibr_train_split.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["slide", "final_label", "dataset_uid"])
        w.writeheader()
        w.writerows(rows)
    return root


def copy_amibr_subset(amibr: Path, dest: Path, per_class: int = 16, size: int = 32) -> Path:
    """A few dozen real AMi-Br crops (downscaled to ``size`` for speed) with their CSV rows."""
    with open(amibr / "amibr_train_split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    chosen = []
    for cls in ("Atypical", "Normal"):
        chosen += [r for r in rows if r["final_label"] == cls][:per_class]
    for r in chosen:
        (dest / r["final_label"]).mkdir(parents=True, exist_ok=True)
        with Image.open(amibr / r["final_label"] / r["dataset_uid"]) as im:
            im.convert("RGB").resize((size, size)).save(dest / r["final_label"] / r["dataset_uid"])
    with open(dest / "amibr_train_split.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(chosen)
    return dest


TINY_VIT_CARD = """
name = "tiny-vit-test"
description = "a tiny ViT for linear-probe and LoRA tests"
kind = "vit"
status = "untrained"
trained_mode = "lora"
batch_size = 16

[architecture]
name = "vit_tiny_patch16_224"
pretrained = "none"

[architecture.kwargs]
img_size = 32
patch_size = 8
embed_dim = 32
depth = 2
num_heads = 2
reg_tokens = 2
no_embed_class = true

[input]
crop_size = 32
model_size = 32
mpp = 0.25

[labels]
output = "p_atypical"

[embedding]
method = "cls+mean"
patch_start = 3
dim = 64

[lora]
r = 4
alpha = 8
dropout = 0.0
target_modules = ["qkv", "proj", "fc1", "fc2"]
adapt_patch_embed = true
head = "pooled"

[preprocess.linear-probe]
train = []
eval = []

[preprocess.lora]
train = [{ op = "hflip" }]
eval = []
"""
