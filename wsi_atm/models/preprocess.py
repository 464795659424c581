"""Preprocessing and augmentation built from a model card's op lists.

Ops are written in cards as inline tables, e.g. ``{op = "resize", size = 224}``. They act on one
uint8 CHW tensor at a time (torchvision v2), followed by conversion to float and normalisation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from wsi_atm.errors import ModelError
from wsi_atm.models.card import Preprocess
from wsi_atm.models.schema import INTERPOLATIONS, check_op

_INTERP = {name: InterpolationMode(name) for name in INTERPOLATIONS}


class RandomRot90(torch.nn.Module):
    """Rotate by a random multiple of 90° (label-preserving for mitoses, no interpolation)."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, (1,)).item())
        return torch.rot90(img, k, dims=(-2, -1)) if k else img


class StainJitter(torch.nn.Module):
    """Per-channel scale and shift in optical-density space: mimics stain and scanner variation."""

    def __init__(self, scale: float = 0.1, shift: float = 0.02) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        od = -torch.log((img.float() + 1.0) / 256.0)
        a = 1.0 + (torch.rand(3, 1, 1) * 2 - 1) * self.scale
        b = (torch.rand(3, 1, 1) * 2 - 1) * self.shift
        out = torch.exp(-(od * a + b)) * 256.0 - 1.0
        return out.clamp(0, 255).round().to(torch.uint8)


# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB) as rows, optical density per RGB.
_HED_FROM_RGB = torch.linalg.inv(torch.tensor([
    [0.65, 0.70, 0.29],
    [0.07, 0.99, 0.11],
    [0.27, 0.57, 0.78],
]))
_RGB_FROM_HED = torch.linalg.inv(_HED_FROM_RGB)


class HedJitter(torch.nn.Module):
    """Scale and shift each stain's concentration (H, E, DAB) by colour deconvolution.

    Mimics the lab-to-lab variation in staining strength that a per-channel RGB jitter cannot:
    haematoxylin and eosin move independently, along their own colours.
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.02) -> None:
        super().__init__()
        self.sigma, self.bias = sigma, bias

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        od = -torch.log((img.float().clamp(min=1.0)) / 255.0)  # (3, H, W)
        hed = torch.einsum("chw,cd->dhw", od, _HED_FROM_RGB)
        alpha = 1.0 + (torch.rand(3, 1, 1) * 2 - 1) * self.sigma
        beta = (torch.rand(3, 1, 1) * 2 - 1) * self.bias
        od = torch.einsum("dhw,dc->chw", hed * alpha + beta, _RGB_FROM_HED)
        return (torch.exp(-od) * 255.0).clamp(0, 255).round().to(torch.uint8)


# Reinhard et al. 2001: RGB -> LMS cone space, then log10 and a decorrelating rotation (lαβ).
_LMS_FROM_RGB = torch.tensor([
    [0.3811, 0.5783, 0.0402],
    [0.1967, 0.7244, 0.0782],
    [0.0241, 0.1288, 0.8444],
])
_LAB_FROM_LOGLMS = torch.diag(torch.tensor([3 ** -0.5, 6 ** -0.5, 2 ** -0.5])) @ torch.tensor([
    [1.0, 1.0, 1.0],
    [1.0, 1.0, -2.0],
    [1.0, -1.0, 0.0],
])
# The same maps on natural logs (log10 x = ln x / ln 10): exp and log are far cheaper than
# powers of ten, and folding the constant into the 3×3 matrices costs nothing per pixel.
_LAB_FROM_LNLMS = _LAB_FROM_LOGLMS / math.log(10.0)
_LNLMS_FROM_LAB = torch.linalg.inv(_LAB_FROM_LNLMS)
_RGB255_FROM_LMS = torch.linalg.inv(_LMS_FROM_RGB) * 255.0


def _flat(img: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) → (…, 3, H·W) float, so each 3×3 colour map is one batched matmul."""
    return img.reshape(*img.shape[:-2], img.shape[-2] * img.shape[-1]).float()


def _lab(img: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (CHW or NCHW) → Reinhard's lαβ as (…, 3, H·W)."""
    rgb = _flat(img).clamp(min=1.0) / 255.0
    lms = (_LMS_FROM_RGB.to(rgb.device) @ rgb).clamp(min=1e-6)
    lab: torch.Tensor = _LAB_FROM_LNLMS.to(rgb.device) @ torch.log(lms)
    return lab


FLAT_SPREAD = 1e-4  # lαβ spread below which a crop's channel counts as flat


def spread_scale(s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target / s``, ramped to 0 for a flat channel (continuous in ``s``)."""
    ramp = ((s - FLAT_SPREAD) / FLAT_SPREAD).clamp(0.0, 1.0)
    return ramp * target / s.clamp(min=FLAT_SPREAD)


class ReinhardNormalise(torch.nn.Module):
    """Stain normalisation: move each image's lαβ mean and spread to fixed targets.

    Deterministic, so it serves as a card-level eval op too (one image CHW or a batch NCHW);
    written with plain tensor ops so that it exports into an inference graph.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ModelError("reinhard needs mean and std of three values each, std > 0")
        self.mean = torch.tensor([float(v) for v in mean]).view(3, 1)
        self.std = torch.tensor([float(v) for v in std]).view(3, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        lab = _lab(img)
        dev = lab.device
        m = lab.mean(dim=-1, keepdim=True)
        d = lab - m
        # sample spread (n - 1), as torch.std; two passes are cheaper than var_mean on CPU
        s = ((d * d).sum(dim=-1, keepdim=True) / (d.shape[-1] - 1)).sqrt()
        # A flat channel has no spread to move: its deviations are float rounding, which the
        # scale amplified a thousandfold into a pattern that differed between PyTorch and ONNX
        # Runtime (a black crop: |dp| 0.25, and the graph was dropped for good). It keeps only
        # the target mean; the scale ramps in linearly between FLAT_SPREAD and twice that, so
        # no crop sits at a cliff. No AMi-Br crop has a channel this flat (least spread 0.003).
        lab = d * spread_scale(s, self.std.to(dev)) + self.mean.to(dev)
        out: torch.Tensor = _RGB255_FROM_LMS.to(dev) @ torch.exp(_LNLMS_FROM_LAB.to(dev) @ lab)
        return out.clamp(0, 255).round().to(torch.uint8).reshape(img.shape)


def reinhard_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean over images of each image's lαβ mean and spread (the targets a card records)."""
    lab = _lab(images)
    mean = lab.mean(dim=-1).mean(dim=0)
    std = lab.std(dim=-1).mean(dim=0)
    return [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]


class JpegRecompress(torch.nn.Module):
    """Re-encode as JPEG at a random quality: the compression artefacts of other scanners."""

    def __init__(self, quality: tuple[int, int] = (50, 95)) -> None:
        super().__init__()
        self.low, self.high = int(quality[0]), int(quality[1])

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        q = int(torch.randint(self.low, self.high + 1, (1,)).item())
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=q)
        with Image.open(buf) as im:
            out = np.asarray(im.convert("RGB"))
        return torch.from_numpy(out.copy()).permute(2, 0, 1)


def _probability(spec: dict[str, Any], module: torch.nn.Module) -> torch.nn.Module:
    """An op with ``p = …`` is applied to that share of images only."""
    p = spec.get("p")
    return module if p is None else T.RandomApply([module], p=float(p))


def _op(spec: dict[str, Any]) -> torch.nn.Module:
    # Cards are checked when read; this catches op lists built elsewhere (a misspelt
    # interpolation was silently bilinear, a resize without size a KeyError).
    try:
        check_op(spec, "preprocess")
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    kind = spec["op"]
    interp = _INTERP[spec.get("interpolation", "bilinear")]
    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "resize": lambda: T.Resize(spec["size"], interpolation=interp, antialias=True),
        "center_crop": lambda: T.CenterCrop(spec["size"]),
        "hflip": lambda: T.RandomHorizontalFlip(),
        "vflip": lambda: T.RandomVerticalFlip(),
        "rot90": RandomRot90,
        "rotate": lambda: T.RandomRotation(spec["degrees"], interpolation=interp),
        "color_jitter": lambda: T.ColorJitter(
            spec.get("brightness", 0.0), spec.get("contrast", 0.0),
            spec.get("saturation", 0.0), spec.get("hue", 0.0)),
        "random_resized_crop": lambda: T.RandomResizedCrop(
            spec["size"], scale=tuple(spec.get("scale", (0.08, 1.0))),
            ratio=tuple(spec.get("ratio", (3 / 4, 4 / 3))), interpolation=interp, antialias=True),
        "stain_jitter": lambda: StainJitter(spec.get("scale", 0.1), spec.get("shift", 0.02)),
        "hed_jitter": lambda: HedJitter(spec.get("sigma", 0.05), spec.get("bias", 0.02)),
        "gaussian_blur": lambda: T.GaussianBlur(
            spec.get("kernel", 5), sigma=tuple(spec.get("sigma", (0.1, 1.0)))),
        "sharpness": lambda: T.RandomAdjustSharpness(spec.get("factor", 2.0), p=1.0),
        "jpeg": lambda: JpegRecompress(tuple(spec.get("quality", (50, 95)))),
        "reinhard": lambda: ReinhardNormalise(spec["mean"], spec["std"]),
    }
    return _probability(spec, builders[kind]())


def build(ops: Sequence[dict[str, Any]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Compose uint8 CHW → uint8 CHW ops (identity for an empty list)."""
    modules = [_op(spec) for spec in ops]
    return T.Compose(modules) if modules else (lambda x: x)


class BatchTransform:
    """Apply per-sample ops to a uint8 NCHW batch, then convert to normalised float."""

    def __init__(self, pre: Preprocess, train: bool) -> None:
        self.ops = build(pre.train if train else pre.eval)
        # Random ops draw their parameters per call, so training applies them image by image;
        # eval ops are deterministic and run on the whole batch (on its device).
        self.per_sample = train and bool(pre.train)
        self.mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.per_sample:
            batch = torch.stack([self.ops(img) for img in batch])
        else:
            batch = self.ops(batch)
        return normalise(batch, self.mean.to(batch.device), self.std.to(batch.device))


def normalise(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (batch.float() / 255.0 - mean) / std
