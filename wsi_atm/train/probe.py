"""Linear probing: frozen-backbone features computed once per run, then a head per fold."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from wsi_atm.files import atomic_path
from wsi_atm.models.adapters import LinearProbe
from wsi_atm.models.card import ModelCard
from wsi_atm.models.nets import build_net
from wsi_atm.models.preprocess import BatchTransform
from wsi_atm.progress import progress_bar
from wsi_atm.train.config import TrainConfig
from wsi_atm.train.data import CropDataset
from wsi_atm.train.protocol import (
    FoldData,
    FoldTrainer,
    load_resume_file,
    unusable_resume_file,
    uses_pretrained,
)
from wsi_atm.train.results import FoldResult


class ProbeHead(nn.Module):
    """The probe's trainable part; its keys (``head.*``) match the full probe network's."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(features)[:, 0]
        return logits


@torch.inference_mode()
def compute_features(
    net: LinearProbe, data: CropDataset, transform: BatchTransform, batch_size: int = 64,
    quiet: bool = False,
) -> torch.Tensor:
    """Embeddings of every crop (eval preprocessing; on CUDA in fp16 autocast, as the
    benchmark computed them)."""
    device = next(net.parameters()).device
    net.eval()
    out = []
    bar = progress_bar(len(data), "features", quiet=quiet, unit="crop")
    for i in range(0, len(data), batch_size):
        x = transform(data.images[i : i + batch_size].to(device))
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            out.append(net.embed(x).float().cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out)


def _cached_features(cache: Path, n: int) -> torch.Tensor:
    """The features an earlier run of this folder cached: a (crops, dim) tensor, else refused."""
    features = load_resume_file(cache)
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or len(features) != n:
        raise unusable_resume_file(cache, f"not the features of {n} crops")
    return features


def train_probe_folds(
    card: ModelCard, data: CropDataset, plans: list[FoldData], cfg: TrainConfig, out: Path,
    quiet: bool, device: torch.device | None = None,
) -> list[FoldResult]:
    """A head per planned fold in ``plans`` (the folds this process trains), backbone and
    heads on ``device`` (default the CPU)."""
    cache = out / "features.pt"
    pretrained = uses_pretrained(card, cfg)
    # Seeded: a resumed run rebuilds the backbone its cached features came from (it matters
    # without pretrained weights, when the backbone is random).
    torch.manual_seed(cfg.seed)
    probe = build_net(card, "linear-probe", pretrained=pretrained)
    assert isinstance(probe, LinearProbe)  # build_net's linear-probe mode
    if cache.is_file():
        features = _cached_features(cache, len(data))
    else:
        pre = card.preprocess_for("linear-probe")
        features = compute_features(probe.to(device or "cpu"), data,
                                    BatchTransform(pre, False), quiet=quiet)
        with atomic_path(cache) as tmp:
            torch.save(features, tmp)
    # The card could not rebuild a random backbone: each fold's checkpoint then holds it.
    frozen = {} if pretrained else {k: v.cpu() for k, v in probe.state_dict().items()
                                    if not k.startswith("head.")}
    feat_data = CropDataset(images=features, labels=data.labels, groups=data.groups,
                            names=data.names, root=data.root, soft=data.soft)
    results: list[FoldResult] = []
    for plan in plans:
        torch.manual_seed(cfg.seed + plan.fold)
        head = ProbeHead(nn.Linear(features.shape[1], 1))
        trainer = FoldTrainer(card, feat_data, plan, cfg, out / f"fold_{plan.fold}", quiet,
                              net=head, transform=lambda x: x.float(), frozen=frozen,
                              device=device)
        results.append(trainer.run())
    return results
