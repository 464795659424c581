"""Upstream checkpoints (PEFT fold state dicts, plain state dicts, linear-probe heads) loaded into
wsi-atm's nets with ``weights_only`` loading only, and the label convention."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import timm
import torch
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.models.adapters import MergedLoraNet, lora_state, save_lora
from wsi_atm.models.card import atypical_sign
from wsi_atm.models.loading import (
    atypical_logits,
    build_from_checkpoint,
    convert_state,
    holds_backbone,
    load_checkpoint,
    load_upstream,
    p_atypical_from_logits,
    upstream_fold,
)
from wsi_atm.models.nets import build_net
from wsi_atm.models.registry import find_card

VIRCHOW2 = {"depth": 2, "embed_dim": 96, "num_heads": 2, "img_size": 56}
SWIN = {"embed_dim": 32, "depths": (1, 1), "num_heads": (1, 2), "img_size": 56}

UNPICKLED: list[str] = []


def _mark_unpickled() -> dict:
    UNPICKLED.append("ran")
    return {}


class Evil:
    """Unpickling this runs code: exactly what weights_only loading must refuse."""

    def __reduce__(self):
        return (_mark_unpickled, ())


@pytest.fixture(autouse=True)
def _no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _randomise(net: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.ones_like(p) if name.endswith("gamma")
                    else torch.randn(p.shape, generator=gen) * 0.1)


def _x(size: int) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))


def _upstream_lora(tmp_path, card, seed: int = 1):
    """An upstream fold file: ``torch.save(peft_model.state_dict(), ...)``."""
    net = build_net(card, "lora", False, **VIRCHOW2)
    _randomise(net, seed)
    path = tmp_path / "virchow2_lora_fold_3_best.pth"
    torch.save(net.model.state_dict(), path)  # net.model is the PeftModel, as upstream saved
    return net.eval(), path


def test_upstream_lora_fold_checkpoint_loads_completely(tmp_path):
    card = find_card("virchow2")
    upstream, path = _upstream_lora(tmp_path, card)
    assert all(k.startswith("base_model.model.") for k in torch.load(path, weights_only=True))
    assert upstream_fold(path) == 3
    net = load_upstream(card, path, pretrained=False, **VIRCHOW2).eval()
    with torch.no_grad():
        assert torch.allclose(net(_x(56)), upstream(_x(56)))
    fresh = build_net(card, "lora", False, **VIRCHOW2)
    assert load_checkpoint(fresh, path) is True  # every weight: no hub download needed


def test_upstream_lora_from_peft_before_base_layer_naming(tmp_path):
    card = find_card("virchow2")
    upstream, path = _upstream_lora(tmp_path, card, seed=2)
    old = {k.replace(".base_layer.", "."): v for k, v in torch.load(path).items()
           if ".original_module." not in k}
    torch.save(old, path)
    net = load_upstream(card, path, pretrained=False, **VIRCHOW2).eval()
    with torch.no_grad():
        assert torch.allclose(net(_x(56)), upstream(_x(56)))


def test_wsi_atm_lora_checkpoint_is_partial_and_checked(tmp_path):
    card = find_card("virchow2")
    net = build_net(card, "lora", False, **VIRCHOW2)
    path = tmp_path / "fold_0.safetensors"
    save_lora(net, card, path)
    fresh = build_net(card, "lora", False, **VIRCHOW2)
    assert load_checkpoint(fresh, path, card) is False  # adapters + head only
    state = lora_state(net)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ModelError, match="adapters were trained on"):
        load_checkpoint(fresh, path, find_card("virchow"))


def test_upstream_swin_state_dict_maps_its_classifier(tmp_path):
    class BinarySwin(nn.Module):  # the upstream wrapper
        def __init__(self):
            super().__init__()
            self.model = timm.create_model("swin_base_patch4_window7_224", num_classes=0, **SWIN)
            self.pool = nn.AdaptiveAvgPool1d(1)
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(self.model.num_features, 1))

        def forward(self, x):
            return self.classifier(self.model(x))

    torch.manual_seed(0)
    upstream = BinarySwin().eval()
    path = tmp_path / "amibr_swin_base_patch4_window7_224_fold_1_best.pth"
    torch.save(upstream.state_dict(), path)
    net = load_upstream(find_card("swin-b"), path, **SWIN).eval()
    with torch.no_grad():
        assert torch.allclose(net(_x(56)), upstream(_x(56))[:, 0], atol=1e-6)


def test_upstream_vit_and_data_parallel_prefixes(tmp_path):
    card = find_card("vit-l")
    small = {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 64}
    torch.manual_seed(0)
    ref = build_net(card, "end-to-end", False, **small).eval()
    path = tmp_path / "amibr_vit_large_patch16_224_fold_2_best.pth"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)  # DataParallel
    net = load_upstream(card, path, **small).eval()
    with torch.no_grad():
        assert torch.allclose(net(_x(64)), ref(_x(64)))
    del_one = {k: v for k, v in ref.state_dict().items() if not k.endswith("head.bias")}
    torch.save(del_one, path)
    with pytest.raises(ModelError, match="required tensors missing"):
        load_upstream(card, path, **small)


def test_upstream_linear_probe_head(tmp_path):
    card = find_card("virchow2")
    path = tmp_path / "virchow2_linear_probe_fold_1_best.pth"
    w, b = torch.randn(1, 192), torch.randn(1)
    torch.save({"classifier.weight": w, "classifier.bias": b}, path)
    net = load_upstream(card, path, mode="linear-probe", pretrained=False, **VIRCHOW2)
    assert torch.equal(net.head.weight, w) and torch.equal(net.head.bias, b)


class _Runs:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("unpickled",))


def test_a_pickled_object_is_refused_without_advice_to_unpickle_it(tmp_path, capsys):
    # Regression: the refusal quoted torch's "Re-running torch.load with weights_only set to
    # False will likely succeed", and torch's pickle-protocol warning was printed too
    import pickle

    net = build_net(find_card("virchow2"), "lora", False, **VIRCHOW2)
    path = tmp_path / "other.pth"
    path.write_bytes(pickle.dumps({"w": _Runs()}))
    with warnings.catch_warnings(record=True) as seen, pytest.raises(ModelError) as refused:
        warnings.simplefilter("always")
        load_checkpoint(net, path)
    message = str(refused.value)
    assert "refused to load" in message and "objects other than tensors" in message
    assert "weights_only" not in message and "\n" not in message
    assert seen == []
    assert "unpickled" not in capsys.readouterr().out


def test_tensors_that_do_not_fit_are_refused(tmp_path):
    card = find_card("virchow2")
    net = build_net(card, "lora", False, **VIRCHOW2)
    path = tmp_path / "other.pth"
    torch.save({"base_model.model.decoder.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelError, match="do not fit"):
        load_checkpoint(net, path)
    probe = build_net(card, "linear-probe", False, **VIRCHOW2)
    torch.save({"base_model.model.head.weight": torch.zeros(1, 96)}, path)
    with pytest.raises(ModelError, match="mode 'lora'"):
        load_checkpoint(probe, path)


@pytest.mark.parametrize(("weight", "named"), [
    (torch.full((1, 192), float("nan")), "head.weight holds NaN or infinite values"),
    (torch.full((1, 192), float("-inf")), "head.weight holds NaN or infinite values"),
    (torch.ones(1, 192, dtype=torch.int8), "head.weight holds int8 values, not floats"),
    (torch.ones(1, 192, dtype=torch.bool), "head.weight holds bool values, not floats"),
])
def test_weights_of_nan_or_non_float_values_are_refused(tmp_path, weight, named):
    # Regression: NaN weights loaded, and classify or evaluate then ended in an internal
    # error (NaN probabilities); integer or boolean weights were cast to floats without a word
    from safetensors.torch import save_file

    path = tmp_path / "virchow2_linear_probe_fold_1_best.safetensors"
    save_file({"classifier.weight": weight, "classifier.bias": torch.zeros(1)}, str(path))
    with pytest.raises(ModelError, match=named):
        load_upstream(find_card("virchow2"), path, mode="linear-probe", pretrained=False,
                      **VIRCHOW2)
    save_file({"classifier.weight": torch.ones(1, 192, dtype=torch.float16),
               "classifier.bias": torch.zeros(1)}, str(path))  # half precision still loads
    load_upstream(find_card("virchow2"), path, mode="linear-probe", pretrained=False, **VIRCHOW2)


def test_pickled_objects_are_refused_not_executed(tmp_path):
    path = tmp_path / "uni_lora_fold_1_best.pth"
    torch.save({"state_dict": {"head.weight": torch.zeros(1, 96)}, "extra": Evil()}, path)
    UNPICKLED.clear()
    net = build_net(find_card("uni"), "linear-probe", False,
                    depth=1, embed_dim=96, num_heads=2, img_size=64)
    with pytest.raises(ModelError) as exc:
        load_checkpoint(net, path)
    assert "refused" in str(exc.value) and "\n" not in str(exc.value)
    assert UNPICKLED == []  # the payload never ran


def test_label_convention():
    logits = torch.tensor([-3.0, 0.0, 2.5])
    upstream = find_card("virchow2")
    assert upstream.output == "p_normal" and atypical_sign(upstream) == -1.0
    assert torch.allclose(p_atypical_from_logits(logits, upstream), 1 - torch.sigmoid(logits))
    assert torch.equal(atypical_logits(logits, upstream), -logits)
    ours = dataclasses.replace(upstream, output="p_atypical")
    assert torch.allclose(p_atypical_from_logits(logits, ours), torch.sigmoid(logits))
    assert p_atypical_from_logits(logits.half(), upstream).dtype == torch.float32


def test_upstream_fold_probabilities_become_p_atypical(tmp_path):
    card = find_card("virchow2")
    upstream, path = _upstream_lora(tmp_path, card, seed=4)
    net = load_upstream(card, path, **VIRCHOW2).eval()
    with torch.no_grad():
        p_normal = torch.sigmoid(upstream(_x(56)))  # what the upstream notebooks computed
        assert torch.allclose(p_atypical_from_logits(net(_x(56)), card), 1 - p_normal)


def test_convert_state_leaves_unknown_keys_for_the_report():
    net = build_net(find_card("vit-l"), "end-to-end", False,
                    depth=1, embed_dim=64, num_heads=2, img_size=64)
    out = convert_state({"something.else": torch.zeros(1), "head.weight": torch.zeros(1, 64)},
                        net)
    assert set(out) == {"something.else", "model.head.weight"}


def test_build_from_checkpoint_needs_no_hub_for_a_complete_upstream_file(tmp_path):
    card = find_card("virchow2")
    upstream, path = _upstream_lora(tmp_path, card, seed=5)
    assert holds_backbone(torch.load(path, weights_only=True))
    net = build_from_checkpoint(card, path, **VIRCHOW2)  # offline, empty cache: no download
    assert isinstance(net, MergedLoraNet) and not net.training
    with torch.no_grad():
        assert torch.allclose(net(_x(56)), upstream(_x(56)), atol=1e-5)


def test_build_from_checkpoint_wants_the_pretrained_backbone_for_adapters_only(tmp_path):
    card = find_card("virchow2")
    net = build_net(card, "lora", False, **VIRCHOW2)
    path = tmp_path / "fold_0.safetensors"
    save_lora(net, card, path)
    assert not holds_backbone(lora_state(net))
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):  # it asked the hub (cache) for it
        build_from_checkpoint(card, path, **VIRCHOW2)
