"""Stain- and scanner-robust augmentation ops, and soft-label targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.train_helpers import write_synthetic_crops, write_tiny_card
from wsi_atm.errors import ModelError
from wsi_atm.models.card import load_card
from wsi_atm.models.preprocess import HedJitter, _op, build, reinhard_stats
from wsi_atm.train.config import TrainConfig
from wsi_atm.train.data import load_dataset
from wsi_atm.train.protocol import FoldTrainer, plan_folds


def _tissue(seed: int = 0) -> torch.Tensor:
    """A pinkish H&E-like patch with a purple nucleus."""
    g = torch.Generator().manual_seed(seed)
    img = torch.stack([torch.full((64, 64), 230.0), torch.full((64, 64), 170.0),
                       torch.full((64, 64), 200.0)])
    img[:, 20:44, 20:44] = torch.tensor([90.0, 50.0, 140.0]).view(3, 1, 1)
    return (img + torch.randn(3, 64, 64, generator=g) * 4).clamp(0, 255).to(torch.uint8)


def test_hed_jitter_without_jitter_is_the_identity_within_one_grey_level():
    img = _tissue()
    out = HedJitter(sigma=0.0, bias=0.0)(img)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    assert (out.int() - img.int()).abs().max() <= 1


def test_hed_jitter_moves_haematoxylin_and_eosin_independently():
    img = _tissue()
    torch.manual_seed(1)
    outs = torch.stack([HedJitter(sigma=0.3, bias=0.05)(img).float() for _ in range(20)])
    spread = outs.std(0).mean()
    assert spread > 3  # colours really vary
    nucleus, stroma = outs[:, :, 30, 30], outs[:, :, 5, 5]
    # Nucleus (mostly H) and stroma (mostly E) do not brighten in lockstep.
    corr = np.corrcoef(nucleus[:, 0].numpy(), stroma[:, 1].numpy())[0, 1]
    assert abs(corr) < 0.95


@pytest.mark.parametrize("spec", [
    {"op": "gaussian_blur", "sigma": [0.5, 1.0]},
    {"op": "sharpness", "factor": 2.0},
    {"op": "jpeg", "quality": [30, 40]},
])
def test_degradation_ops_change_the_image_but_keep_its_format(spec):
    img = _tissue()
    out = _op(spec)(img)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    assert not torch.equal(out, img)


def test_probability_zero_never_applies_and_unknown_ops_are_refused():
    img = _tissue()
    assert torch.equal(_op({"op": "jpeg", "quality": [10, 20], "p": 0.0})(img), img)
    with pytest.raises(ModelError, match="unknown preprocessing op 'hed'"):
        build([{"op": "hed"}])


def test_soft_labels_train_on_the_expert_share(tmp_path):
    root = write_synthetic_crops(tmp_path / "data")
    csv_path = root / "amibr_train_split.csv"
    lines = csv_path.read_text().splitlines()
    votes = {"Atypical": "True,True,False", "Normal": "False,False,False"}
    rows = [lines[0] + ",expert1_atypical,expert2_atypical,expert3_atypical"]
    rows += [f"{ln},{votes[ln.split(',')[1]]}" for ln in lines[1:]]
    csv_path.write_text("\n".join(rows) + "\n")
    data = load_dataset(root, size=32)
    assert data.soft is not None
    assert {round(float(v), 3) for v in data.soft} == {0.0, 0.667}
    card = load_card(write_tiny_card(tmp_path / "cards"))
    idx = np.arange(len(data))
    for soft, expected in ((True, data.soft), (False, data.labels)):
        cfg = TrainConfig(folds=2, epochs=1, soft_labels=soft)
        trainer = FoldTrainer(card, data, plan_folds(data, cfg)[0], cfg, tmp_path / "f")
        assert torch.allclose(trainer.target(idx), torch.as_tensor(expected, dtype=torch.float32))


def test_reinhard_leaves_a_flat_crop_flat_at_the_target_mean():
    op = _op({"op": "reinhard", "mean": [-1.0, 0.01, 0.005], "std": [0.2, 0.03, 0.01]})
    for value in (0, 30, 128, 255):
        flat = torch.full((2, 3, 32, 32), value, dtype=torch.uint8)
        out = op(flat)
        assert out.shape == flat.shape
        assert bool((out == out[:, :, :1, :1]).all())  # still flat: no rounding noise blown up
    assert torch.equal(op(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
                       op(torch.full((1, 3, 32, 32), 1, dtype=torch.uint8)))  # both clamp to 1


def test_reinhard_has_no_cliff_between_flat_and_textured():
    # Regression (review): the scale jumped from 0 to target/s at the flatness floor, so two
    # crops whose spreads straddled it by a rounding error came out far apart
    from wsi_atm.models.preprocess import FLAT_SPREAD, spread_scale

    target = torch.tensor([0.2])
    for edge in (FLAT_SPREAD, 2 * FLAT_SPREAD):
        below, above = (spread_scale(torch.tensor([edge * f]), target) for f in (1 - 1e-6,
                                                                                   1 + 1e-6))
        assert float((above - below).abs()) < 1e-3 * float(target / FLAT_SPREAD)
    assert float(spread_scale(torch.tensor([0.0]), target)) == 0.0
    assert float(spread_scale(torch.tensor([0.003]), target)) == pytest.approx(0.2 / 0.003)


def test_reinhard_moves_each_image_to_the_target_statistics():
    # two differently stained versions of one patch: pale and dark
    base = _tissue(1).float()
    pale = (255 - (255 - base) * 0.6).round().to(torch.uint8)
    dark = (base * 0.8).round().to(torch.uint8)
    batch = torch.stack([pale, dark])
    mean, std = reinhard_stats(torch.stack([base.to(torch.uint8)]))
    out = _op({"op": "reinhard", "mean": mean, "std": std})(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    got_mean, got_std = reinhard_stats(out)
    assert np.allclose(got_mean, mean, atol=0.02) and np.allclose(got_std, std, rtol=0.1)
    # the two stainings end up close to each other (they started 30+ grey levels apart)
    before = (pale.float() - dark.float()).abs().mean()
    after = (out[0].float() - out[1].float()).abs().mean()
    assert before > 30 and after < 6
    # deterministic, and one image alone is normalised as within a batch
    single = _op({"op": "reinhard", "mean": mean, "std": std})(pale)
    assert torch.equal(single, out[0])


def _textbook_reinhard(img: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Reinhard et al. 2001 written the plain way (log10, powers of ten), one CHW image."""
    lms_from_rgb = torch.tensor([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782],
                                 [0.0241, 0.1288, 0.8444]], dtype=torch.float64)
    lab_from_log = torch.diag(torch.tensor([3 ** -0.5, 6 ** -0.5, 2 ** -0.5],
                                           dtype=torch.float64)) @ torch.tensor(
        [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]], dtype=torch.float64)
    rgb = img.double().clamp(min=1.0).reshape(3, -1) / 255.0
    lab = lab_from_log @ torch.log10((lms_from_rgb @ rgb).clamp(min=1e-6))
    lab = (lab - lab.mean(1, keepdim=True)) / lab.std(1, keepdim=True) \
        * torch.tensor(std, dtype=torch.float64).view(3, 1) \
        + torch.tensor(mean, dtype=torch.float64).view(3, 1)
    out = torch.linalg.inv(lms_from_rgb) @ 10 ** (torch.linalg.inv(lab_from_log) @ lab) * 255
    return out.clamp(0, 255).round().to(torch.uint8).reshape(img.shape)


def test_reinhard_equals_the_textbook_formula_on_real_crops(amibr_dir):
    # The op is written for speed (natural logs, batched 3×3 maps, exportable to ONNX); it must
    # still be Reinhard's transform: at most one grey level apart, on very few pixels.
    from PIL import Image

    files = sorted((amibr_dir / "Atypical").iterdir())[:8] + sorted(
        (amibr_dir / "Normal").iterdir())[:8]
    crops = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy())
                         .permute(2, 0, 1) for f in files])
    mean, std = [-0.4924, -0.06761, 0.02526], [0.29016, 0.05605, 0.01047]
    got = _op({"op": "reinhard", "mean": mean, "std": std})(crops).int()
    want = torch.stack([_textbook_reinhard(c, mean, std) for c in crops]).int()
    diff = (got - want).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3


def test_reinhard_needs_its_targets():
    with pytest.raises(ModelError, match="reinhard"):
        _op({"op": "reinhard", "mean": [0.1, 0.2], "std": [0.1, 0.1, 0.1]})
    with pytest.raises(ModelError, match="reinhard"):
        _op({"op": "reinhard"})
