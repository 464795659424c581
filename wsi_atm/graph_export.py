"""Export a card's eval transform and one network as a single ONNX graph (needs torch).

The graph takes the crops as the crop engine yields them — uint8, (N, H, W, 3) at the card's
crop size — and gives the network's logit per crop, so ONNX Runtime runs the transform too
(centre crop, resize, stain normalisation, mean/std) and no torch is needed at inference.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from wsi_atm.engines import OPSET, not_writable_by_all
from wsi_atm.errors import ModelError
from wsi_atm.files import atomic_path
from wsi_atm.models.preprocess import BatchTransform


class EvalGraph(nn.Module):
    """uint8 NHWC crops → the card's eval transform → the network → one logit per crop."""

    def __init__(self, transform: BatchTransform, net: nn.Module) -> None:
        super().__init__()
        if transform.per_sample:
            raise ModelError("only a deterministic (eval) transform goes into a graph")
        self.ops = transform.ops
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", transform.mean.clone())
        self.register_buffer("std", transform.std.clone())
        self.net = net

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = self.ops(crops.permute(0, 3, 1, 2))
        x = (x.float() / 255.0 - self.mean) / self.std
        logit: torch.Tensor = self.net(x).float().reshape(-1)
        return logit


def export_graph(transform: BatchTransform, net: nn.Module, crop_size: int, path: Path) -> None:
    """Write the transform and ``net`` as one self-contained ONNX file (any batch size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    twin = copy.deepcopy(net).float().to(memory_format=torch.contiguous_format).eval()
    graph = EvalGraph(transform, twin).eval()
    example = torch.zeros(2, crop_size, crop_size, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Regression: on a read-only cache each run exported for seconds, then failed to save
        tmp.touch()
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, (example,),
            input_names=["x"], output_names=["logit"], dynamic_shapes={"crops": {0: batch}},
            opset_version=OPSET, dynamo=True, verbose=False)
        if program is None:
            raise ModelError("torch.onnx.export returned no program")
        program.save(str(tmp), external_data=False)
        not_writable_by_all(tmp)  # else never trusted without torch (written_by_this_user)
