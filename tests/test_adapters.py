"""Linear probes and LoRA on the benchmark's real backbone families, shrunk (random init, no hub).

Each foundation-model card is loaded as bundled and built through ``build_net`` with only its
size overridden (depth 2, width 96 or 64, 2 heads, 56/64 px), so timm, the card's kwargs and
hub ``model_args`` (SwiGLUPacked + SiLU, register tokens, no_embed_class, LayerScale, pooling)
and the head attachment are the real ones.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.models.adapters import (
    LinearProbe,
    LoraNet,
    MergedLoraNet,
    build_linear_probe,
    lora_state,
    merge_for_inference,
    read_lora_metadata,
    save_lora,
)
from wsi_atm.models.card import EmbeddingSpec
from wsi_atm.models.loading import load_checkpoint
from wsi_atm.models.nets import build_net
from wsi_atm.models.registry import find_card
from wsi_atm.models.weight_files import save_safetensors

R = 8
# card -> (size overrides, image size, patch, fc1 out, fc2 in, prefix tokens, embedding factor)
P14 = {"depth": 2, "embed_dim": 96, "num_heads": 2, "img_size": 56}
P16 = {"depth": 2, "embed_dim": 96, "num_heads": 2, "img_size": 64}
FAMILIES = {
    # SwiGLUPacked: fc1 packs both halves (int(96 * 5.3375) = 512), fc2 takes half (256)
    "virchow": (P14, 56, 14, 512, 256, 1, 2),
    "virchow2": (P14, 56, 14, 512, 256, 5, 2),
    "uni": (P16, 64, 16, 384, 384, 1, 1),  # GELU MLP, ratio 4
    "uni2-h": (P14, 56, 14, 512, 256, 9, 1),  # 8 registers, no_embed_class
    "h-optimus-0": (P14, 56, 14, 512, 256, 5, 1),
    "h-optimus-1": (P14, 56, 14, 512, 256, 5, 1),
    "prov-gigapath": (P16, 64, 16, 512, 256, 1, 1),
}
D, DEPTH = 96, 2


@pytest.fixture(autouse=True)
def _no_hub(tmp_path, monkeypatch):
    """An empty hub cache and offline mode: nothing here may touch the network."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _small(name: str, mode: str, **extra):
    overrides, size, *_ = FAMILIES[name]
    card = find_card(name)
    return card, build_net(card, mode, False, **overrides, **extra), size


def _randomise(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial adapters and heads (LoRA B starts at zero) and full LayerScale, so that
    adapters and blocks actually change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _x(size: int, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _analytic_lora_params(name: str, patch_embed: bool = True) -> int:
    _, _, patch, fc1_out, fc2_in, _, _ = FAMILIES[name]
    per_block = R * ((D + 3 * D) + (D + D) + (D + fc1_out) + (fc2_in + D))  # qkv, proj, fc1, fc2
    conv = R * (3 * patch * patch) + D * R if patch_embed else 0  # A: Conv(3, r, p), B: 1x1
    head = D + 1  # the trained copy of Linear(D, 1)
    return DEPTH * per_block + conv + head


# ------------------------------------------------------------------------------ linear probes
@pytest.mark.parametrize("name", FAMILIES)
def test_linear_probe_embedding_and_output(name):
    card, net, size = _small(name, "linear-probe")
    factor = FAMILIES[name][6]
    assert isinstance(net, LinearProbe)
    assert card.embedding.method == ("cls+mean" if factor == 2 else "cls")
    x = _x(size)
    z = net.embed(x)
    assert z.shape == (3, D * factor)  # cls+mean doubles the width
    assert net.head.in_features == D * factor
    assert net(x).shape == (3,)
    assert torch.allclose(net.logits(z), net(x))
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    net.train()
    assert net.training and not net.backbone.training  # the frozen backbone stays in eval


def test_cls_mean_is_cls_concat_mean_of_patch_tokens_after_registers():
    _, net, size = _small("virchow2", "linear-probe")
    x = _x(size)
    with torch.no_grad():
        tokens = net.backbone.forward_features(x)
    assert tokens.shape[1] == 5 + (size // 14) ** 2  # CLS + 4 registers + patches
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
    assert torch.allclose(net.embed(x), expected)


def test_cls_embedding_is_the_class_token():
    _, net, size = _small("uni2-h", "linear-probe")
    x = _x(size)
    with torch.no_grad():
        tokens = net.backbone.forward_features(x)
    assert torch.allclose(net.embed(x), tokens[:, 0])


def _tiny_vit_card(**embedding):
    card = find_card("resnet10t-scratch")
    return dataclasses.replace(
        card, name="tiny-vit", architecture="vit_tiny_patch16_224",
        kwargs={"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2},
        embedding=EmbeddingSpec(**embedding))


def test_linear_probe_checks_the_card_against_the_backbone():
    with pytest.raises(ModelError, match=r"embedding\.dim"):
        build_linear_probe(_tiny_vit_card(method="cls", dim=999))
    with pytest.raises(ModelError, match="prefix tokens"):
        build_linear_probe(_tiny_vit_card(method="cls+mean", patch_start=5, dim=64))
    with pytest.raises(ModelError, match=r"embedding\.method"):
        build_linear_probe(_tiny_vit_card(method="mean", dim=32))
    net = build_linear_probe(_tiny_vit_card(method="cls+mean", patch_start=1, dim=64))
    assert net.embed(torch.randn(2, 3, 32, 32)).shape == (2, 64)


# --------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("name", FAMILIES)
def test_lora_output_and_trainable_parameters_match_the_analytic_count(name):
    _, net, size = _small(name, "lora")
    assert isinstance(net, LoraNet)
    assert net.eval()(_x(size)).shape == (3,)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == _analytic_lora_params(name)
    # peft's suffix matching on "proj" adapts the patch-embedding Conv2d, as upstream
    names = [n for n, _ in net.named_modules()]
    assert any(n.endswith("patch_embed.proj.lora_A") for n in names)


def test_lora_without_patch_embed_leaves_the_conv_alone():
    card = find_card("virchow2")
    card = dataclasses.replace(card, lora=dataclasses.replace(card.lora, adapt_patch_embed=False))
    net = build_net(card, "lora", False, **P14)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == _analytic_lora_params("virchow2", patch_embed=False)
    base = net.model.base_model.model
    assert type(base.patch_embed.proj) is nn.Conv2d
    assert hasattr(base.blocks[0].attn.proj, "lora_A")  # attn.proj still adapted


def test_lora_heads_attach_as_upstream():
    # token0: Linear(D, 1) applied to every token, the net keeps the CLS token's logit
    _, net, size = _small("virchow2", "lora")
    _randomise(net)
    net.eval()
    base = net.model.base_model.model
    x = _x(size)
    with torch.no_grad():
        tokens = base.forward_features(x)
        per_token = base.forward_head(tokens)
    assert per_token.shape == (3, tokens.shape[1], 1)
    assert torch.allclose(net(x), per_token[:, 0, 0])
    # pooled: timm's own head, num_classes = 1
    _, net, _ = _small("uni", "lora")
    assert net.model.base_model.model.num_classes == 1
    # replace: num_classes = 0, head replaced by Linear(num_features, 1)
    _, net, _ = _small("h-optimus-1", "lora")
    base = net.model.base_model.model
    assert base.num_classes == 0
    head = base.head.modules_to_save["default"]
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (D, 1)


@pytest.mark.parametrize("name", ["virchow2", "uni", "h-optimus-0", "prov-gigapath"])
def test_merged_lora_equals_unmerged_and_has_no_lora(name):
    _, net, size = _small(name, "lora")
    _randomise(net)
    net.eval()
    x = _x(size)
    with torch.no_grad():
        before = net(x)
        assert before.std() > 1e-3  # the images give different logits
        merged = merge_for_inference(net)
        after = merged(x)
    assert isinstance(merged, MergedLoraNet) and not merged.training
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4)
    assert not any("lora" in n or "base_layer" in n for n, _ in merged.named_modules())
    assert not any("lora_" in k or "modules_to_save" in k for k in merged.state_dict())
    assert not any(type(m).__module__.startswith("peft") for m in merged.modules())


def test_merge_passes_other_nets_through():
    _, probe, _ = _small("uni", "linear-probe")
    assert merge_for_inference(probe) is probe


def test_lora_state_holds_only_adapters_and_head_and_round_trips(tmp_path):
    card, net, size = _small("virchow2", "lora")
    _randomise(net, seed=3)
    state = lora_state(net)
    assert state and all(".lora_" in k or ".modules_to_save." in k for k in state)
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert set(state) == set(trainable)
    full = sum(v.numel() for v in net.state_dict().values())
    assert sum(v.numel() for v in state.values()) < full / 5

    path = tmp_path / "fold_0" / "lora.safetensors"
    meta = save_lora(net, card, path)
    assert read_lora_metadata(path) == meta
    assert meta["base_model"] == "hf-hub:paige-ai/Virchow2"
    assert meta["base_revision"] == ""  # not cached here, and the card pins none
    assert (meta["r"], meta["head"], meta["output"]) == ("8", "token0", "p_normal")

    fresh = build_net(card, "lora", pretrained=False, **P14)
    assert load_checkpoint(fresh, path, card) is False  # adapters and head only
    # the frozen base is random here: copy it, so the comparison tests adapters and head only
    base = {k: v for k, v in net.state_dict().items() if k not in state}
    fresh.load_state_dict(base, strict=False)
    x = _x(size)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), fresh.eval()(x))


def test_lora_checkpoint_of_another_base_model_is_refused(tmp_path):
    card, net, _ = _small("virchow2", "lora")
    path = tmp_path / "lora.safetensors"
    save_lora(net, card, path)
    other = find_card("virchow")
    with pytest.raises(ModelError, match="paige-ai/Virchow2"):
        load_checkpoint(build_net(other, "lora", pretrained=False, **P14), path, other)
    pinned = dataclasses.replace(card, hub_revision="0" * 40)
    save_lora(net, dataclasses.replace(card, hub_revision="1" * 40), path)
    with pytest.raises(ModelError, match="revision"):
        load_checkpoint(build_net(pinned, "lora", pretrained=False, **P14), path, pinned)


def test_lora_checkpoint_missing_or_foreign_adapters_is_refused(tmp_path):
    _, net, _ = _small("uni", "lora")
    path = tmp_path / "lora.safetensors"
    state = lora_state(net)
    state.pop(next(k for k in state if "lora_B" in k))
    save_safetensors(state, path)
    with pytest.raises(ModelError, match="1 required tensors missing"):
        load_checkpoint(net, path)
    state = lora_state(net)
    state["model.base_model.model.blocks.9.attn.qkv.lora_A.default.weight"] = torch.zeros(1)
    save_safetensors(state, path)
    with pytest.raises(ModelError, match="do not fit"):
        load_checkpoint(net, path)


# -------------------------------------------------------------------- end-to-end baselines
@pytest.mark.parametrize("name, overrides, size", [
    ("efficientnetv2-m", {"channel_multiplier": 0.25, "depth_multiplier": 0.1}, 64),
    ("swin-b", {"embed_dim": 32, "depths": (1, 1), "num_heads": (1, 2), "img_size": 56}, 56),
    ("vit-l", {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 64}, 64),
])
def test_end_to_end_baselines_give_one_logit(name, overrides, size):
    net = build_net(find_card(name), "end-to-end", False, **overrides)
    assert net.eval()(_x(size, n=2)).shape == (2,)
