"""The card schema: strict reading (unknown keys and values name the key), one writer, and
names that mean bundled cards even when a local folder has the same name."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from wsi_atm.errors import ModelError
from wsi_atm.models.card import load_card, read_card
from wsi_atm.models.registry import find_card, registry_dir
from wsi_atm.models.schema import dump, leading_comment

DEFAULT = registry_dir() / "wsi-atm-default.toml"


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "card.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(("old", "new", "named"), [
    ("threshold =", "treshold =", "decision.treshold"),
    ('status = "trained"', 'status = "trainde"', "status"),
    ('output = "p_atypical"', 'output = "p_atypcal"', "labels.output"),
    ("crop_size = 128", "crop_size = 128\ncropsize = 96", "input.cropsize"),
    ('pretrained = "none"', 'pretrained = "none"\npretrained_sha = ""',
     "architecture.pretrained_sha"),
    ("[preprocess.end-to-end]", "[preprocess.end2end]", "preprocess.end2end"),
    ('kind = "cnn"', 'kind = "cnnn"', "kind"),
    ("[metrics]", "[metrics]\nsensitivty = 0.9", "metrics.sensitivty"),
    # Regression: the schema allowed "em", which classify knows as "calibrated-em", and
    # silently ran Rogan-Gladen for it
    ('method = "calibrated-mean"', 'method = "em"', "fraction.method"),
])
def test_misspelt_key_or_value_is_refused_by_name(tmp_path, old, new, named):
    path = _edited(tmp_path, old, new)
    with pytest.raises(ModelError, match=rf"invalid model card \(.*{named}\b"):
        load_card(path)


@pytest.mark.parametrize("method", ["raw", "rogan-gladen", "calibrated-mean", "calibrated-em"])
def test_every_estimator_classify_computes_may_be_named(tmp_path, method):
    # Regression: "calibrated-em", an estimator classify computes, was refused
    card = load_card(_edited(tmp_path, 'method = "calibrated-mean"', f'method = "{method}"'))
    assert card.fraction["method"] == method


@pytest.mark.parametrize(("old", "new", "named"), [
    # Regression: a threshold of 7 or nan called every mitosis normal; a sensitivity of 2.0
    # was used in the slide estimate
    ("threshold = 0.332895", "threshold = 7", "decision.threshold"),
    ("threshold = 0.332895", "threshold = nan", "decision.threshold"),
    ("sensitivity = 0.739198", "sensitivity = 2.0", "metrics.sensitivity"),
    ("shift_sd = 0.1243", "shift_sd = -0.1", "fraction.shift_sd"),
    ("q_normal = 0.102244", 'q_normal = "low"', "fraction.q_normal"),
])
def test_numbers_outside_their_range_are_refused(tmp_path, old, new, named):
    with pytest.raises(ModelError, match=rf"invalid model card \(.*{named} = .* must be"):
        load_card(_edited(tmp_path, old, new))


def test_a_centre_crop_larger_than_its_image_is_refused(tmp_path):
    # Regression: center_crop 300 on the 128-px crops padded them with black and the default
    # network called all 60 candidates of the sample slide atypical, without a word
    with pytest.raises(ModelError, match=r"preprocess\.end-to-end\.eval\[0\]: center_crop size "
                                         r"300 is larger than the 128-px image"):
        load_card(_edited(tmp_path, 'eval = [{ op = "center_crop", size = 96 }',
                          'eval = [{ op = "center_crop", size = 300 }'))
    path = _edited(tmp_path, 'eval = [{ op = "center_crop", size = 96 }',
                   'eval = [{ op = "resize", size = 320 }, { op = "center_crop", size = 300 }')
    path.write_text(path.read_text().replace("model_size = 96", "model_size = 300"))
    load_card(path)


def test_an_undefined_fold_spread_is_kept_as_nan(tmp_path):
    # Regression: train wrote cv_sensitivity_std = nan (a fold without atypical mitoses) and
    # the range check made writing the card an internal error at the end of the run
    from wsi_atm.models.schema import dump, validate

    text = DEFAULT.read_text(encoding="utf-8").replace(
        "cv_sensitivity_std = 0.069594", "cv_sensitivity_std = nan")
    path = tmp_path / "card.toml"
    path.write_text(text, encoding="utf-8")
    card = load_card(path)
    assert card.metrics["cv_sensitivity_std"] != card.metrics["cv_sensitivity_std"]
    validate({"metrics": {"cv_sensitivity_std": float("nan")}})
    with pytest.raises(ValueError, match="shift_sd"):
        validate({"fraction": {"shift_sd": float("nan")}})
    assert "nan" in dump({"name": "x", "metrics": {"cv_sensitivity_std": float("nan")}})


def test_misspelt_weight_key_is_refused(tmp_path):
    path = _edited(tmp_path, "sha256 =", "sha265 =")
    with pytest.raises(ModelError, match=r"weights\[0\]\.sha265"):
        load_card(path)


@pytest.mark.parametrize(("old", "new", "named"), [
    # Regression: these were internal errors (exit 1) when the card was used, not bad input
    ('name = "resnet10t"', "name = 5", "architecture.name"),
    ('file = "wsi-atm-default/model.safetensors"', "file = 3", r"weights\[0\]\.file"),
    ('file = "wsi-atm-default/model.safetensors"', 'file = ""', r"weights\[0\]\.file"),
    ("sha256 = ", 'fold = "a"\nsha256 = ', r"weights\[0\]\.fold"),
])
def test_wrong_types_in_architecture_and_weights_are_refused(tmp_path, old, new, named):
    with pytest.raises(ModelError, match=rf"invalid model card \(.*{named} = .* must be"):
        load_card(_edited(tmp_path, old, new))


def test_a_kwarg_the_architecture_lacks_is_bad_input(tmp_path, capsys):
    # Regression: `kwargs = { nonsense = 1 }` was "internal error (TypeError ...)", exit 1
    from tests.cli_helpers import run_cli
    from wsi_atm.models.nets import build_net

    path = _edited(tmp_path, 'pretrained = "none"',
                   'pretrained = "none"\nkwargs = { nonsense = 1 }')
    with pytest.raises(ModelError, match="nonsense"):
        build_net(load_card(path), pretrained=False)
    card = _edited(tmp_path, 'name = "resnet10t"', "name = 5")
    assert run_cli(["models", "--check-preprocess", str(card)]) == 2
    assert "architecture.name = 5" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(registry_dir().glob("*.toml")), ids=lambda p: p.stem)
def test_dump_round_trips_every_bundled_card(path):
    raw = read_card(path)
    assert tomllib.loads(dump(raw)) == raw


def test_dump_refuses_what_read_would_refuse():
    raw = read_card(DEFAULT) | {"stauts": "trained"}
    with pytest.raises(ValueError, match="stauts"):
        dump(raw)


def test_dump_keeps_the_prose_and_quotes_group_names(tmp_path):
    raw = read_card(DEFAULT)
    raw["metrics"] = {"source": "x", "out_of_domain": {"Aperio CS2": {"auroc": 0.8}}}
    path = tmp_path / "c.toml"
    path.write_text(dump(raw, comment="line one\n\nline three"), encoding="utf-8")
    assert leading_comment(path) == "line one\n\nline three"
    assert load_card(path).metrics["out_of_domain"]["Aperio CS2"]["auroc"] == 0.8


def test_local_folder_does_not_shadow_a_bundled_name(tmp_path, monkeypatch):
    # Regression: a folder called uni/ in the working directory made `--model uni` fail with
    # "model card not found: uni/card.toml".
    monkeypatch.chdir(tmp_path)
    (tmp_path / "uni").mkdir()
    assert find_card("uni").path == (registry_dir() / "uni.toml").resolve()


def test_explicit_path_to_a_local_folder_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "uni").mkdir()
    (tmp_path / "uni" / "card.toml").write_text(DEFAULT.read_text(encoding="utf-8"))
    (tmp_path / "uni" / "wsi-atm-default").symlink_to(registry_dir() / "wsi-atm-default")
    assert find_card("./uni").path == (tmp_path / "uni" / "card.toml").resolve()


def test_unknown_bare_name_hints_at_the_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myrun").mkdir()
    with pytest.raises(ModelError, match=r"unknown model 'myrun' \(for the local 'myrun', "
                                         r"pass \./myrun\)"):
        find_card("myrun")


def test_a_card_pinning_two_revisions_is_refused(tmp_path: Path) -> None:
    # Regression: hf-hub:org/name@A with revision = "B" was accepted and B won silently
    text = (DEFAULT.parent / "virchow2.toml").read_text(encoding="utf-8")
    a, b = "a" * 40, "b" * 40
    for name, revision, refused in [(f"@{a}", b, True), (f"@{a}", a, False), ("", b, False)]:
        path = tmp_path / "card.toml"
        path.write_text(text.replace('name = "hf-hub:paige-ai/Virchow2"',
                                     f'name = "hf-hub:paige-ai/Virchow2{name}"')
                        .replace('revision = ""', f'revision = "{revision}"'), encoding="utf-8")
        if refused:
            with pytest.raises(ModelError, match=f"pins revision {a} and architecture.revision "
                                                 f"says {b}: keep one"):
                load_card(path)
        else:
            load_card(path)
