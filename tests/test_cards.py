"""The bundled model cards: they load, their op lists build, and the ten benchmark cards say
what docs/benchmark-protocol.md says (architecture, preprocessing per mode, LoRA, heads,
embeddings, upstream label convention)."""

from __future__ import annotations

import shutil

import pytest
import torch

from wsi_atm.errors import ModelError
from wsi_atm.models.backbone import _resolve_layer_names, create_backbone
from wsi_atm.models.card import IMAGENET_MEAN, IMAGENET_STD, load_card, verify_weights
from wsi_atm.models.hub import build_offline
from wsi_atm.models.preprocess import build
from wsi_atm.models.registry import find_card, list_cards, registry_dir, weights_column
from wsi_atm.models.schema import MODES

HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")

# name -> (hub id, embedding method, patch_start, embedding dim, LoRA head)
FOUNDATION = {
    "virchow": ("hf-hub:paige-ai/Virchow", "cls+mean", 1, 2560, "token0"),
    "virchow2": ("hf-hub:paige-ai/Virchow2", "cls+mean", 5, 2560, "token0"),
    "uni": ("hf-hub:MahmoodLab/uni", "cls", 1, 1024, "pooled"),
    "uni2-h": ("hf-hub:MahmoodLab/UNI2-h", "cls", 9, 1536, "pooled"),
    "h-optimus-0": ("hf-hub:bioptimus/H-optimus-0", "cls", 5, 1536, "replace"),
    "h-optimus-1": ("hf-hub:bioptimus/H-optimus-1", "cls", 5, 1536, "replace"),
    "prov-gigapath": ("hf_hub:prov-gigapath/prov-gigapath", "cls", 1, 1536, "pooled"),
}
BASELINES = {
    "efficientnetv2-m": ("efficientnetv2_m", "none", 1280),
    "swin-b": ("swin_base_patch4_window7_224.ms_in22k_ft_in1k", "imagenet", 1024),
    "vit-l": ("vit_large_patch16_224.augreg_in21k_ft_in1k", "imagenet", 1024),
}
BENCHMARK = (*FOUNDATION, *BASELINES)


@pytest.fixture(autouse=True)
def _no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _op(name, **kw):
    return {"op": name, **kw}


def test_every_bundled_card_loads_and_its_ops_build():
    cards = list_cards()
    names = {c.name for c in cards}
    assert set(BENCHMARK) <= names
    for card in cards:
        for mode, pre in card.preprocess.items():
            assert mode in MODES, (card.name, mode)
            build(pre.train)
            build(pre.eval)
            assert len(pre.mean) == len(pre.std) == 3


@pytest.mark.parametrize("name", BENCHMARK)
def test_benchmark_card_feeds_224_px_from_128_px_crops(name):
    card = find_card(name)
    assert card.description and card.name == name
    assert (card.crop_size, card.input_size, card.mpp) == (128, 224, 0.25)
    assert card.status == "external" and card.output == "p_normal"
    crop = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)
    torch.manual_seed(0)
    for mode, pre in card.preprocess.items():
        for ops in (pre.train, pre.eval):
            out = build(ops)(crop)
            assert out.shape == (3, 224, 224) and out.dtype == torch.uint8, (name, mode, ops)


@pytest.mark.parametrize("name", BENCHMARK)
def test_benchmark_card_weights_are_named_not_invented(name):
    card = find_card(name)
    assert [w.fold for w in card.weights] == [0, 1, 2, 3, 4]
    assert all(w.sha256 == "" for w in card.weights)  # never invent checksums
    assert all(w.file.startswith("external/") and w.file.endswith(f"_fold_{w.fold + 1}_best.pth")
               for w in card.weights)
    # `wsi-atm train` copies everything before the first [[weights]]: those must come last
    text = (registry_dir() / f"{name}.toml").read_text(encoding="utf-8")
    tail = text.partition("\n[[weights]]")[2]
    assert all(not ln.startswith("[") or ln == "[[weights]]" for ln in tail.splitlines())


@pytest.mark.parametrize("name", FOUNDATION)
def test_foundation_card_matches_the_protocol(name):
    arch, method, patch_start, dim, head = FOUNDATION[name]
    card = find_card(name)
    assert card.architecture == arch and card.pretrained == arch and card.is_hub
    assert card.kind == "foundation" and card.trained_mode == "lora"
    assert (card.embedding.method, card.embedding.patch_start, card.embedding.dim) == (
        method, patch_start, dim)
    lora = card.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (8, 16, 0.3, LORA_TARGETS)
    assert lora.adapt_patch_embed and lora.head == head
    assert set(card.preprocess) == {"linear-probe", "lora"}
    stats = (HOPTIMUS_MEAN, HOPTIMUS_STD) if name.startswith("h-optimus") else (
        IMAGENET_MEAN, IMAGENET_STD)
    assert (card.preprocess["linear-probe"].mean, card.preprocess["linear-probe"].std) == stats
    lora_stats = ((0.5,) * 3, (0.5,) * 3) if name.startswith("virchow") else stats
    assert (card.preprocess["lora"].mean, card.preprocess["lora"].std) == lora_stats


def test_foundation_kwargs_and_per_model_preprocessing():
    resize, crop = _op("resize", size=224), _op("center_crop", size=224)
    bicubic = _op("resize", size=224, interpolation="bicubic")
    hflip, rot15 = _op("hflip"), _op("rotate", degrees=15, interpolation="nearest")
    cj2 = _op("color_jitter", brightness=0.2, contrast=0.2)
    rrc = _op("random_resized_crop", size=224, scale=[0.08, 1.0])
    for v in ("virchow", "virchow2"):
        card = find_card(v)
        assert card.kwargs == {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
        assert card.preprocess["lora"].train == (
            _op("random_resized_crop", size=224, scale=[0.8, 1.0]), hflip,
            _op("color_jitter", brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1))
        assert card.preprocess["lora"].eval == (resize, crop)
        assert card.preprocess["linear-probe"].eval == (bicubic, crop)
    assert find_card("virchow2").hub_model_args["reg_tokens"] == 4
    assert "reg_tokens" not in find_card("virchow").hub_model_args
    uni2 = find_card("uni2-h")
    assert uni2.kwargs == {
        "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
        "embed_dim": 1536, "mlp_ratio": 5.33334, "mlp_layer": "SwiGLUPacked",
        "act_layer": "SiLU", "reg_tokens": 8, "no_embed_class": True, "dynamic_img_size": True}
    assert uni2.preprocess["lora"].train == uni2.preprocess["lora"].eval  # no augmentation
    assert find_card("uni").kwargs == {"init_values": 1e-5, "dynamic_img_size": True}
    for h in ("h-optimus-0", "h-optimus-1"):
        assert find_card(h).kwargs == {"init_values": 1e-5, "dynamic_img_size": False}
        assert find_card(h).preprocess["linear-probe"].eval == (resize,)
    assert find_card("h-optimus-0").preprocess["lora"].train == (rrc, hflip, rot15, cj2)
    assert find_card("h-optimus-1").preprocess["lora"].train == (resize, hflip, rot15, cj2)
    for name in ("uni", "prov-gigapath"):
        assert find_card(name).preprocess["lora"].train == (rrc, hflip, rot15, cj2)
        assert find_card(name).preprocess["lora"].eval == (resize, crop)
    giga = find_card("prov-gigapath").preprocess["linear-probe"]
    assert giga.eval == (_op("resize", size=256, interpolation="bicubic"), crop)


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_card_matches_the_protocol(name):
    arch, pretrained, _ = BASELINES[name]
    card = find_card(name)
    assert (card.architecture, card.pretrained, card.trained_mode) == (arch, pretrained,
                                                                       "end-to-end")
    pre = card.preprocess["end-to-end"]
    assert pre.train == (
        _op("resize", size=224), _op("hflip"),
        _op("rotate", degrees=10, interpolation="nearest"),
        _op("color_jitter", brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        _op("random_resized_crop", size=224, scale=[0.8, 1.0]))
    assert pre.eval == (_op("resize", size=224),)
    assert (pre.mean, pre.std) == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("name", FOUNDATION)
def test_full_size_foundation_architecture_fits_the_card(name):
    """At full size on the meta device (no memory, no download): the offline description of
    each hub model gives the card's embedding width and prefix tokens (CLS + registers)."""
    card = find_card(name)
    kwargs = dict(card.kwargs)
    _resolve_layer_names(kwargs)
    with torch.device("meta"):
        model = build_offline(card, num_classes=0, **kwargs)
    factor = 2 if card.embedding.method == "cls+mean" else 1
    assert model.num_features * factor == card.embedding.dim
    assert model.num_prefix_tokens == card.embedding.patch_start
    assert model.patch_embed.proj.kernel_size == ((16, 16) if name in ("uni", "prov-gigapath")
                                                  else (14, 14))


@pytest.mark.parametrize("name", BASELINES)
def test_full_size_baseline_width(name):
    with torch.device("meta"):
        model = create_backbone(find_card(name), pretrained=False, num_classes=0)
    assert model.num_features == BASELINES[name][2]


def _copy_of_default(folder, extra: str = ""):
    default = find_card("wsi-atm-default")
    (folder / default.path.name).write_text(default.path.read_text(encoding="utf-8") + extra,
                                            encoding="utf-8")
    shutil.copytree(default.weight_paths()[0].parent, folder / "wsi-atm-default")
    return load_card(folder / default.path.name)


def test_models_listing_hashes_the_files_it_calls_verified(tmp_path):
    """Regression: `wsi-atm models` said "verified sha256" for a damaged weights file (it only
    looked whether the card states a sha256); classify then refused the model."""
    copy = _copy_of_default(tmp_path)
    assert "verified sha256" in weights_column(copy)
    weights = copy.weight_paths()[0]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    column = weights_column(copy)
    assert "verified" not in column and "sha256 MISMATCH: model.safetensors" in column


@pytest.mark.parametrize("file", ["./wsi-atm-default/model.safetensors", "fold_1.safetensors"])
def test_a_fold_listed_twice_is_refused(tmp_path, file):
    """Regression: the same weights listed twice (or a copy of them) ran as a two-model
    ensemble: folds = 2 in the outputs, and a spread between the models of exactly 0."""
    copy = _copy_of_default(tmp_path, f'\n[[weights]]\nfile = "{file}"\nfold = 1\n')
    shutil.copy(copy.weight_paths()[0], tmp_path / "fold_1.safetensors")
    with pytest.raises(ModelError, match=r"holds the same weights as .*model\.safetensors"):
        verify_weights(copy)
