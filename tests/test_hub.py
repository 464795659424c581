"""The real Hugging Face Hub path, offline: a tiny Virchow2-like model written into a hub cache
(timm's config.json + model.safetensors in the ``models--org--name`` layout) is loaded with
``timm.create_model("hf-hub:org/name", pretrained=True)`` through wsi_atm.hub, with
``HF_HUB_OFFLINE=1``; and the one-line errors for a missing cache and a gated repo."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import SwiGLUPacked
from torch import nn

from tests.cli_helpers import run_cli
from wsi_atm.errors import ModelError
from wsi_atm.models import hub, sources
from wsi_atm.models.adapters import LinearProbe, LoraNet, lora_metadata
from wsi_atm.models.backbone import preprocess_differences, timm_name
from wsi_atm.models.card import load_card
from wsi_atm.models.nets import build_net
from wsi_atm.models.registry import find_card

REPO = "wsi-atm-test/tiny-virchow2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# timm's hub config format (what timm's save_for_hf writes and _parse_model_cfg reads): the
# architecture, head info, the model_args the factory is called with, and the pretrained_cfg
# (input size, interpolation, crop, mean/std) that resolve_data_config uses. Layer classes
# (SwiGLUPacked, SiLU) are not serialisable, so callers pass them, as for the real Virchow2.
CONFIG = {
    "architecture": "vit_huge_patch14_224",
    "num_classes": 0,
    "num_features": 96,
    "global_pool": "",
    "model_args": {
        "img_size": 56, "depth": 2, "embed_dim": 96, "num_heads": 2, "init_values": 1e-5,
        "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375, "global_pool": "",
        "dynamic_img_size": True,
    },
    "pretrained_cfg": {
        "tag": "tiny", "custom_load": False, "input_size": [3, 56, 56],
        "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": 1.0,
        "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "num_classes": 0, "pool_size": None, "first_conv": "patch_embed.proj",
        "classifier": "head",
    },
}
LAYERS = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
CARD = f"""
name = "tiny-virchow2"
description = "a Virchow2-shaped test model in an offline hub cache"
kind = "foundation"
trained_mode = "lora"
[architecture]
name = "hf-hub:{REPO}"
pretrained = "hf-hub:{REPO}"
kwargs = {{ mlp_layer = "SwiGLUPacked", act_layer = "SiLU" }}
timm_equivalent = "vit_huge_patch14_224"
[architecture.hub_model_args]
img_size = 56
depth = 1
embed_dim = 96
num_heads = 2
reg_tokens = 4
mlp_ratio = 5.3375
global_pool = ""
[labels]
output = "p_normal"
[embedding]
method = "cls+mean"
patch_start = 5
dim = 192
[lora]
head = "token0"
"""


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, offline, and no token (not even a stored one)."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    return home


def write_hub_model(home: Path, weights: bool = True) -> dict[str, torch.Tensor]:
    """The cache layout huggingface_hub reads: refs/main -> snapshots/<commit>/<files>."""
    torch.manual_seed(0)
    model = timm.create_model(CONFIG["architecture"], **CONFIG["model_args"], **LAYERS)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    repo_dir = home / "hub" / ("models--" + REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    (snapshot / "config.json").write_text(json.dumps(CONFIG, indent=2))
    if weights:
        save_file(state, str(snapshot / "model.safetensors"))
    return state


def _card(tmp_path: Path):
    path = tmp_path / "tiny-virchow2.toml"
    path.write_text(CARD, encoding="utf-8")
    return load_card(path)


def test_offline_hub_load_gives_the_cached_weights(hf_home):
    written = write_hub_model(hf_home)
    for name in (f"hf-hub:{REPO}", f"hf_hub:{REPO}", f"hf-hub:{REPO}@{COMMIT}"):
        model = hub.create_model(name, pretrained=True, **LAYERS)
        got = model.state_dict()
        assert set(got) == set(written)
        assert all(torch.equal(got[k], written[k]) for k in written)
    assert model.pretrained_cfg["hf_hub_id"].startswith(REPO)
    assert model.num_prefix_tokens == 5 and len(model.blocks) == 2


def test_card_through_build_net_uses_the_cached_weights(hf_home, tmp_path):
    written = write_hub_model(hf_home)
    card = _card(tmp_path)
    lora = build_net(card, "lora", pretrained=True)
    assert isinstance(lora, LoraNet)
    base = lora.model.base_model.model
    qkv = base.blocks[1].attn.qkv.base_layer.weight
    assert torch.equal(qkv, written["blocks.1.attn.qkv.weight"])
    assert len(base.blocks) == 2  # the cached config.json wins over the card's hub_model_args
    x = torch.randn(2, 3, 56, 56)
    assert lora.eval()(x).shape == (2,)
    probe = build_net(card, "linear-probe", pretrained=True)
    assert isinstance(probe, LinearProbe)
    assert torch.equal(probe.backbone.pos_embed, written["pos_embed"])
    assert probe.embed(x).shape == (2, 192)
    # the LoRA checkpoint metadata records the snapshot that was actually used
    meta = lora_metadata(card)
    assert (meta["base_model"], meta["base_revision"]) == (f"hf-hub:{REPO}", COMMIT)


def test_without_pretrained_weights_a_cached_config_is_still_used(hf_home, tmp_path):
    write_hub_model(hf_home, weights=False)
    net = build_net(_card(tmp_path), "lora", pretrained=False)
    assert len(net.model.base_model.model.blocks) == 2


def test_without_cache_or_weights_the_card_builds_offline(hf_home, tmp_path):
    net = build_net(_card(tmp_path), "lora", pretrained=False)  # nothing cached, offline
    assert len(net.model.base_model.model.blocks) == 1  # the card's hub_model_args


def test_cached_revision_and_files(hf_home):
    assert hub.cached_revision(f"hf-hub:{REPO}") == ""
    write_hub_model(hf_home)
    assert hub.cached_revision(f"hf-hub:{REPO}") == COMMIT
    assert hub.cached_file(f"hf_hub:{REPO}", "model.safetensors").parent.name == COMMIT
    assert hub.hub_cache_dir() == hf_home / "hub"
    assert hub.hub_offline()


def test_timm_eval_preprocess_reads_the_pretrained_cfg(hf_home):
    write_hub_model(hf_home)
    pre = hub.timm_eval_preprocess(hub.create_model(f"hf-hub:{REPO}", **LAYERS))
    assert pre.eval == ({"op": "resize", "size": 56, "interpolation": "bicubic"},
                        {"op": "center_crop", "size": 56})
    assert pre.mean == (0.485, 0.456, 0.406) and pre.train == pre.eval


def test_check_preprocess_compares_a_card_with_the_hub_config(hf_home, tmp_path, capsys):
    write_hub_model(hf_home)
    agreeing = CARD + """
[preprocess.linear-probe]
eval = [{ op = "resize", size = 56, interpolation = "bicubic" }, { op = "center_crop", size = 56 }]
"""
    path = tmp_path / "agree.toml"
    path.write_text(agreeing, encoding="utf-8")
    assert preprocess_differences(load_card(path)) == []
    assert run_cli(["models", "--check-preprocess", str(path)]) == 0
    assert "matches" in capsys.readouterr().out
    path.write_text(agreeing.replace('"bicubic"', '"bilinear"'), encoding="utf-8")
    diffs = preprocess_differences(load_card(path))
    assert len(diffs) == 1 and "bilinear" in diffs[0] and "bicubic" in diffs[0]
    assert run_cli(["models", "--check-preprocess", str(path)]) == 1
    assert "eval ops" in capsys.readouterr().out
    # Regression: with --json the comparison was printed as text
    assert run_cli(["models", "--json", "--check-preprocess", str(path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["matches"] is False and report["differences"] == diffs


def test_check_preprocess_without_the_hub_config_says_so(hf_home, tmp_path, capsys):
    # Regression: with nothing cached the check compared the card with timm's defaults for
    # the card's timm_equivalent (224 px, mean 0.5 here), reported "differences" the hub
    # model does not have and exited 1; for the bundled cards it told users to change
    # correct preprocessing
    path = tmp_path / "agree.toml"
    path.write_text(CARD + """
[preprocess.linear-probe]
eval = [{ op = "resize", size = 56, interpolation = "bicubic" }, { op = "center_crop", size = 56 }]
""", encoding="utf-8")
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        preprocess_differences(load_card(path))
    assert run_cli(["models", "--check-preprocess", str(path)]) == 2
    assert "eval ops" not in capsys.readouterr().out


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_offline_and_not_cached_is_a_clear_error(hf_home):
    with pytest.raises(ModelError) as exc:
        hub.create_model(f"hf-hub:{REPO}", pretrained=True, **LAYERS)
    text = _one_line(exc)
    assert REPO in text and "HF_HUB_OFFLINE" in text and str(hf_home / "hub") in text


def test_offline_with_config_but_no_weights_is_a_clear_error(hf_home):
    write_hub_model(hf_home, weights=False)
    with pytest.raises(ModelError) as exc:
        hub.create_model(f"hf-hub:{REPO}", pretrained=True, **LAYERS)
    assert "missing from the Hugging Face cache" in _one_line(exc)


def test_unknown_revision_offline_is_a_clear_error(hf_home):
    write_hub_model(hf_home)
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        hub.create_model(f"hf-hub:{REPO}@{'f' * 40}", pretrained=True, **LAYERS)


def _gated(*args, **kwargs):
    import httpx2
    from huggingface_hub.errors import GatedRepoError

    url = f"https://huggingface.co/{REPO}/resolve/main/config.json"
    raise GatedRepoError(f"401 Client Error.\n\nCannot access gated repo for url {url}.",
                         response=httpx2.Response(401, request=httpx2.Request("GET", url)))


def test_gated_repo_errors_say_what_to_do(hf_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub.timm, "create_model", _gated)
    with pytest.raises(ModelError) as exc:
        hub.create_model(f"hf-hub:{REPO}", pretrained=True)
    text = _one_line(exc)
    assert "gated" in text and "set HF_TOKEN" in text
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(ModelError) as exc:
        hub.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert "HF_TOKEN has no access" in _one_line(exc)


def test_other_errors_are_not_disguised_as_hub_errors(hf_home, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("unexpected keyword argument 'depthh'")

    write_hub_model(hf_home)
    monkeypatch.setattr(hub.timm, "create_model", broken)
    with pytest.raises(TypeError):
        hub.create_model(f"hf-hub:{REPO}")


def test_hub_ids():
    assert sources.split_hub_id("hf_hub:org/name@abc") == ("org/name", "abc")
    assert sources.split_hub_id("hf-hub:org/name") == ("org/name", "")
    assert sources.normalise_hub_id("hf_hub:prov-gigapath/prov-gigapath") == \
        "hf-hub:prov-gigapath/prov-gigapath"
    assert sources.is_hub_id("hf_hub:a/b") and not sources.is_hub_id("vit_large_patch16_224")


def test_cards_name_hub_models_to_timm_one_way():
    gigapath = find_card("prov-gigapath")  # written hf_hub: in its card
    assert gigapath.is_hub and timm_name(gigapath) == "hf-hub:prov-gigapath/prov-gigapath"
    pinned = dataclasses.replace(gigapath, architecture="hf_hub:org/name@abc")
    assert timm_name(pinned) == "hf-hub:org/name@abc"
    plain = find_card("vit-l")
    assert not plain.is_hub and timm_name(plain) == plain.architecture


SCRIPT = """
import sys, torch
from safetensors.torch import load_file
from timm.layers import SwiGLUPacked
from wsi_atm.models.hub import create_model
model = create_model("hf-hub:{repo}", pretrained=True, mlp_layer=SwiGLUPacked,
                     act_layer=torch.nn.SiLU)
written = load_file(sys.argv[1])
state = model.state_dict()
assert set(state) == set(written) and all(torch.equal(state[k], written[k]) for k in written)
print("ok")
"""


def test_environment_set_before_import_is_honoured(hf_home):
    """As a user runs it: HF_HOME and HF_HUB_OFFLINE set before huggingface_hub is imported."""
    write_hub_model(hf_home)
    weights = hf_home / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(repo=REPO), str(weights / "model.safetensors")],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
    assert load_file(str(weights / "model.safetensors"))  # untouched


def test_onnx_graph_key_follows_the_cached_hub_snapshot(hf_home, tmp_path):
    """Regression: the ONNX graph bakes in the hub backbone, but its cache key did not name
    the snapshot; after the cache's main moved, the torch-free path kept the old backbone's
    probabilities (|dp| 0.08 against PyTorch) without a word."""
    from wsi_atm.engines import network_key

    write_hub_model(hf_home)
    path = tmp_path / "run-card.toml"
    path.write_text(CARD + '[preprocess.lora]\neval = [{ op = "resize", size = 56 }]\n',
                    encoding="utf-8")
    card = load_card(path)
    before = network_key(card)
    repo_dir = hf_home / "hub" / ("models--" + REPO.replace("/", "--"))
    other = "b" * 40
    (repo_dir / "snapshots" / other).mkdir()
    (repo_dir / "snapshots" / other / "config.json").write_text(json.dumps(CONFIG))
    (repo_dir / "refs" / "main").write_text(other)
    assert network_key(card) != before
