"""The inference engine: fold ensembles, label convention, TTA, refusals, prefetching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train_helpers import TINY_CARD
from wsi_atm.engines import precision_on
from wsi_atm.errors import ModelError, OptionError
from wsi_atm.files import sha256_file
from wsi_atm.infer import Classifier, dihedral
from wsi_atm.models.card import load_card
from wsi_atm.models.nets import build_net
from wsi_atm.models.weight_files import save_safetensors
from wsi_atm.prefetch import prefetch


def make_trained_card(folder: Path, folds: int = 2, output: str = "p_atypical",
                      sha: bool = True, base: str = TINY_CARD) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = base.replace('status = "untrained"', 'status = "trained"')
    text = text.replace('output = "p_atypical"', f'output = "{output}"')
    card_path = folder / "tiny-test.toml"
    card_path.write_text(text)
    card = load_card(card_path)
    entries = []
    for k in range(folds):
        torch.manual_seed(100 + k)
        net = build_net(card)
        path = folder / f"fold_{k}.safetensors"
        save_safetensors(net.state_dict(), path)
        digest = sha256_file(path) if sha else ""
        entries.append(f'[[weights]]\nfile = "{path.name}"\nsha256 = "{digest}"\nfold = {k}\n')
    card_path.write_text(text + "\n" + "\n".join(entries))
    return card_path


@pytest.fixture()
def crops() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(10, 32, 32, 3), dtype=np.uint8)


def test_ensemble_is_the_mean_of_fold_models(tmp_path, crops):
    clf = Classifier(load_card(make_trained_card(tmp_path)), device="cpu", batch_size=3)
    folds = clf.predict_folds(crops)
    assert folds.shape == (2, 10)
    assert not np.allclose(folds[0], folds[1])
    assert np.allclose(clf.predict(crops), folds.mean(axis=0))
    assert np.all((folds > 0) & (folds < 1))


def test_batch_size_does_not_change_results(tmp_path, crops):
    card = load_card(make_trained_card(tmp_path))
    a = Classifier(card, device="cpu", batch_size=1).predict(crops)
    b = Classifier(card, device="cpu", batch_size=64).predict(crops)
    assert np.allclose(a, b, atol=1e-5)


def test_upstream_convention_is_converted_to_p_atypical(tmp_path, crops):
    ours = Classifier(load_card(make_trained_card(tmp_path / "a")), device="cpu")
    upstream = Classifier(load_card(make_trained_card(tmp_path / "b", output="p_normal")),
                          device="cpu")
    assert np.allclose(ours.predict_folds(crops), 1.0 - upstream.predict_folds(crops), atol=1e-6)


def test_tta_averages_the_eight_views(tmp_path, crops):
    card = load_card(make_trained_card(tmp_path, folds=1))
    plain = Classifier(card, device="cpu")
    tta = Classifier(card, device="cpu", tta=True)
    views = [plain.predict(np.ascontiguousarray(
        dihedral(torch.from_numpy(crops).permute(0, 3, 1, 2), k).permute(0, 2, 3, 1).numpy()))
        for k in range(8)]
    assert np.allclose(tta.predict(crops), np.mean(views, axis=0), atol=1e-5)
    # The eight views are distinct transforms.
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert len({tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}) == 8


def test_untrained_card_refuses_to_classify(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TINY_CARD)
    with pytest.raises(ModelError, match="untrained"):
        Classifier(load_card(path), device="cpu")


def test_weight_checksum_mismatch_is_refused(tmp_path):
    path = make_trained_card(tmp_path)
    (tmp_path / "fold_1.safetensors").write_bytes(
        (tmp_path / "fold_0.safetensors").read_bytes())
    with pytest.raises(ModelError, match="sha256"):
        Classifier(load_card(path), device="cpu")


def test_wrong_weight_file_is_a_model_error(tmp_path):
    path = make_trained_card(tmp_path, sha=False)
    (tmp_path / "fold_0.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError):
        Classifier(load_card(path), device="cpu")


TINY_VIT = TINY_CARD.replace('name = "resnet10t"', """name = "vit_tiny_patch16_224"
kwargs = { img_size = 32, patch_size = 8, embed_dim = 32, depth = 1, num_heads = 2 }""")


@pytest.mark.parametrize(("base", "old", "new", "why"), [
    # Regression: internal errors (exit 1) on the first batch, or pages of torch.export output
    # under --engine onnx / auto: a ViT built for 32 px fed the 48-px crops the card cuts ...
    (TINY_VIT, "size = 32\nmodel_size = 32", "size = 48\nmodel_size = 48",
     r"48-px crops .*AssertionError: Input height \(48\) doesn't match model \(32\)"),
    # ... and timm kwargs of the wrong type or range, which only the forward pass checks
    (TINY_CARD, 'pretrained = "none"', 'pretrained = "none"\nkwargs = { drop_rate = -1.0 }',
     "ValueError: dropout probability"),
    (TINY_CARD, 'pretrained = "none"', 'pretrained = "none"\nkwargs = { drop_rate = "x" }',
     "ValueError: could not convert string to float"),
])
def test_a_network_that_cannot_take_the_cards_input_is_bad_input(tmp_path, base, old, new, why):
    path = make_trained_card(tmp_path, folds=1, base=base)
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(ModelError, match=why) as caught:
        Classifier(load_card(path), device="cpu", engine="onnx")
    assert "\n" not in str(caught.value)


def test_a_timm_kwarg_of_the_wrong_type_is_bad_input(tmp_path):
    # Regression: `kwargs = { global_pool = 5 }` was an internal error (AttributeError)
    path = tmp_path / "c.toml"
    path.write_text(TINY_CARD.replace('pretrained = "none"',
                                      'pretrained = "none"\nkwargs = { global_pool = 5 }'))
    with pytest.raises(ModelError, match=r"cannot build tiny-test \(resnet10t\)"):
        build_net(load_card(path), pretrained=False)


def test_cuda_request_without_gpu_is_an_option_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from wsi_atm.errors import OptionError

    with pytest.raises(OptionError):
        Classifier(load_card(make_trained_card(tmp_path)), device="cuda")


def test_prefetch_keeps_order_and_reraises():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def boom():
        yield 1
        raise ValueError("bad crop")

    with pytest.raises(ValueError, match="bad crop"):
        list(prefetch(boom()))


def test_building_a_classifier_leaves_torch_threads_alone(tmp_path):
    # Regression: Classifier.__init__ set the process-wide torch.set_num_threads, so a library
    # user's own setting (or a batch worker's share of the cores) was overwritten.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        Classifier(load_card(make_trained_card(tmp_path)), device="cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("device", "kind", "asked", "runs_in"), [
    ("cpu", "cnn", "auto", "float32"),
    ("cpu", "foundation", "auto", "float32"),
    # Regression: every card ran in bf16 autocast on a GPU, so the default CNN's GPU calls
    # differed from the float32 it was validated in (1.8 % flipped, measured on CPU)
    ("cuda", "cnn", "auto", "float32"),
    ("cuda", "vit", "auto", "bf16-autocast"),
    ("cuda", "foundation", "auto", "bf16-autocast"),
    ("cuda", "foundation", "float32", "float32"),
    ("cpu", "cnn", "bf16", "bf16-autocast"),
])
def test_precision_follows_the_device_the_card_and_the_option(device, kind, asked, runs_in):
    assert precision_on(device, kind, asked) == runs_in


def test_precision_says_what_the_networks_compute_in(tmp_path, crops):
    # the summary records it: bf16 calls can differ from float32 ones near the cut
    card = load_card(make_trained_card(tmp_path))
    full = Classifier(card, device="cpu", engine="torch")
    assert full.precision == "float32"
    half = Classifier(card, device="cpu", precision="bf16")  # engine auto: bf16 needs torch
    assert (half.engine, half.precision) == ("torch", "bf16-autocast")
    delta = np.abs(half.predict(crops) - full.predict(crops)).max()
    assert 0 < delta < 0.1  # autocast really ran, and only rounded


def test_bf16_is_refused_on_the_float32_engines(tmp_path):
    card = load_card(make_trained_card(tmp_path))
    with pytest.raises(OptionError, match="--engine onnx runs in float32"):
        Classifier(card, device="cpu", engine="onnx", precision="bf16")
    with pytest.raises(OptionError, match="--precision must be one of"):
        Classifier(card, device="cpu", precision="fp16")


def test_bf16_against_the_environments_onnx_names_the_environment(tmp_path, monkeypatch):
    # Regression: WSI_ATM_ENGINE=onnx with --precision bf16 was refused naming --engine, an
    # option the user never gave
    card = load_card(make_trained_card(tmp_path))
    monkeypatch.setenv("WSI_ATM_ENGINE", "onnx")
    with pytest.raises(OptionError, match=r"^WSI_ATM_ENGINE=onnx runs in float32; drop "
                                          r"--precision bf16 or unset WSI_ATM_ENGINE$"):
        Classifier(card, device="cpu", precision="bf16")
