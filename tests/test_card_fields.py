"""Card values are checked when the card is read: types, ranges, preprocessing ops and what the
``[fraction]`` method needs, each refused in one line naming the card and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train_helpers import TINY_CARD, TINY_VIT_CARD, write_tiny_card
from wsi_atm.errors import ModelError
from wsi_atm.models.card import load_card
from wsi_atm.models.preprocess import build
from wsi_atm.models.registry import registry_dir

DEFAULT = registry_dir() / "wsi-atm-default.toml"


def _card(tmp_path: Path, base: str, old: str, new: str) -> Path:
    assert old in base
    return write_tiny_card(tmp_path, base.replace(old, new, 1))


def _refused(path: Path, named: str) -> None:
    with pytest.raises(ModelError) as caught:
        load_card(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid model card (") and named in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("old", "new", "named"), [
    # Regression: each was accepted (silently bilinear, ignored, or an error far away)
    ('eval = []', 'eval = [{ op = "resize", size = 32, interpolation = "bicubc" }]',
     "eval[0].interpolation = 'bicubc' must be one of bilinear, bicubic, nearest"),
    ('{ op = "rot90" }', '{ op = "rot90", pp = 0.5 }', "unknown key 'pp' of op 'rot90'"),
    ('{ op = "hflip" }', '{ op = "hflipp" }', "unknown preprocessing op 'hflipp'"),
    ('eval = []', 'eval = [{ op = "resize" }]', "op 'resize' needs size"),
    ('eval = []', 'eval = [{ op = "reinhard", mean = [0, 0, 0] }]', "needs std"),
    ('eval = []', 'eval = [{ op = "center_crop", size = 0 }]', "size = 0 must be"),
    ('{ op = "hflip" }', '{ op = "hflip", p = 2 }', "p = 2 must be"),
    ('eval = []', 'eval = []\nmean = [0.5, 0.5]', "preprocess.end-to-end.mean"),
    ('eval = []', 'eval = []\nstd = [0.0, 0.2, 0.2]', "preprocess.end-to-end.std"),
    ("crop_size = 32", "crop_size = 32.9", "input.crop_size = 32.9 must be a whole number"),
    ("crop_size = 32", "crop_size = true", "input.crop_size = True"),
    ("mpp = 0.25", "mpp = 0", "input.mpp = 0 must be"),
    ("mpp = 0.25", "mpp = -0.25", "input.mpp"),
    ("mpp = 0.25", "mpp = nan", "input.mpp"),
    ("batch_size = 16", "batch_size = 0", "batch_size = 0 must be"),
])
def test_bad_input_and_preprocessing_values_are_refused(tmp_path, old, new, named):
    _refused(_card(tmp_path, TINY_CARD, old, new), named)


@pytest.mark.parametrize(("old", "new", "named"), [
    ('method = "cls+mean"', 'method = "mean"', "embedding.method = 'mean' is not one of"),
    ('head = "pooled"', 'head = "pooledd"', "lora.head = 'pooledd' is not one of"),
    ("r = 4", "r = -1", "lora.r = -1 must be"),
    ("dropout = 0.0", "dropout = 2.0", "lora.dropout = 2.0 must be"),
    ("patch_start = 3", "patch_start = -1", "embedding.patch_start"),
])
def test_bad_lora_and_embedding_values_are_refused(tmp_path, old, new, named):
    _refused(_card(tmp_path, TINY_VIT_CARD, old, new), named)


def test_a_preprocessing_op_built_directly_is_checked_too():
    with pytest.raises(ModelError, match="interpolation = 'bicubc'"):
        build([{"op": "resize", "size": 8, "interpolation": "bicubc"}])
    with pytest.raises(ModelError, match="needs size"):
        build([{"op": "resize"}])


FRACTION = DEFAULT.read_text(encoding="utf-8")


@pytest.mark.parametrize(("old", "new", "named"), [
    # Regression: nan ran with a wrong interval; 0, -5, "many" were internal errors after all
    # inference; 2.5 was accepted
    ("cv_n_atypical = 648", "cv_n_atypical = nan", "metrics.cv_n_atypical = nan"),
    ("cv_n_atypical = 648", "cv_n_atypical = -5", "metrics.cv_n_atypical"),
    ("cv_n_atypical = 648", 'cv_n_atypical = "many"', "metrics.cv_n_atypical"),
    ("cv_n_atypical = 648", "cv_n_atypical = 2.5", "metrics.cv_n_atypical = 2.5"),
    # Regression: KeyError / ValueError at summary time, or "nan%" printed
    ("platt_a = 1.257236\n", "", "needs fraction.platt_a"),
    ("platt_a = 1.257236", 'platt_a = "x"', "fraction.platt_a = 'x'"),
    ("platt_a = 1.257236", "platt_a = nan", "fraction.platt_a = nan"),
    ("platt_b = -0.42343", "platt_b = inf", "fraction.platt_b = inf"),
    ("q_normal = 0.102244", "q_normal = 0.9", "q_normal = 0.9 must be below"),
    ("q_normal = 0.102244\n", "", "give both q_normal and q_atypical"),
    ("prior = 0.223912", "prior = 0", "fraction.prior = 0"),
    ('method = "calibrated-mean"\n', "", "fraction.method is missing"),
])
def test_bad_fraction_and_sample_sizes_are_refused(tmp_path, old, new, named):
    assert old in FRACTION
    path = tmp_path / "card.toml"
    path.write_text(FRACTION.replace(old, new, 1), encoding="utf-8")
    _refused(path, named)


def test_a_raw_fraction_needs_no_calibration(tmp_path):
    text = FRACTION.replace('method = "calibrated-mean"', 'method = "raw"')
    for key in ("platt_a = 1.257236\n", "platt_b = -0.42343\n"):
        text = text.replace(key, "")
    path = tmp_path / "card.toml"
    path.write_text(text, encoding="utf-8")
    assert load_card(path).fraction["method"] == "raw"


def test_a_zero_count_means_no_count_as_older_run_cards_wrote_it(tmp_path):
    # Regression (review): `--cv none` run cards written before these checks hold
    # cv_n_atypical = 0 and were refused, the deployable refit among them
    path = tmp_path / "card.toml"
    path.write_text(FRACTION.replace("cv_n_atypical = 648", "cv_n_atypical = 0", 1)
                    .replace("cv_n_normal = 2246", "cv_n_normal = 0", 1), encoding="utf-8")
    card = load_card(path)
    assert card.metrics["cv_n_atypical"] == 0


@pytest.mark.parametrize(("old", "new", "named"), [
    # Regression: a misspelt source was read as ImageNet, and a card could have no name
    ('pretrained = "none"', 'pretrained = "imagent"', "architecture.pretrained = 'imagent'"),
    ('name = "wsi-atm-default"', 'name = ""', "name = ''"),
])
def test_a_misspelt_weight_source_or_an_empty_name_is_refused(tmp_path, old, new, named):
    text = FRACTION.replace(old, new, 1)
    assert text != FRACTION
    path = tmp_path / "card.toml"
    path.write_text(text, encoding="utf-8")
    _refused(path, named)


@pytest.mark.parametrize("hub_id", [
    "hf-hub:../../x", "hf-hub:org/na me", "hf-hub:org/name/../../x", "hf_hub:org/..",
    "hf-hub:org--x/name", "hf-hub:/name",
])
def test_a_hub_id_that_names_no_hub_repository_is_refused(tmp_path, hub_id):
    # Regression: accepted, then an internal error (HFValidationError) when the model was built
    path = _card(tmp_path, TINY_CARD, 'name = "resnet10t"', f'name = "{hub_id}"')
    _refused(path, f"architecture.name = {hub_id!r} is not a hub id")


@pytest.mark.parametrize("hub_id", [
    "hf-hub:MahmoodLab/UNI2-h", "hf_hub:prov-gigapath/prov-gigapath",
    "hf-hub:bioptimus/H-optimus-0@" + "f" * 40, "hf-hub:paige-ai/Virchow2@",
    "hf-hub:timm/vit_small_patch16_224.augreg_in21k",
])
def test_hub_ids_of_hub_repositories_are_accepted(tmp_path, hub_id):
    path = _card(tmp_path, TINY_CARD, 'name = "resnet10t"', f'name = "{hub_id}"')
    assert load_card(path).architecture == hub_id


@pytest.mark.parametrize(("eval_ops", "named"), [
    # Regression: accepted, and applied at inference with one random draw per batch (the same
    # crops got other probabilities from run to run); jpeg was an internal error (exit 1)
    ('[{ op = "hflip" }]', "eval[0]: op 'hflip' is not for eval"),
    ('[{ op = "rot90" }]', "eval[0]: op 'rot90' is not for eval"),
    ('[{ op = "jpeg", quality = [60, 60] }]', "eval[0]: op 'jpeg' is not for eval"),
    ('[{ op = "resize", size = 32 }, { op = "sharpness", factor = 2.0 }]',
     "eval[1]: op 'sharpness' is not for eval"),
    ('[{ op = "center_crop", size = 32, p = 0.5 }]', "eval[0]: p is not for eval"),
    # Regression: a network fed another size than the card's model_size ran silently (a
    # CNN) or failed on its first batch with an internal error (a ViT's fixed input size)
    ('[{ op = "resize", size = 48 }]', "eval gives 48-px images, not the input.model_size"),
    ('[{ op = "center_crop", size = 24 }]', "eval gives 24-px images, not the input.model_size"),
])
def test_eval_ops_are_deterministic_and_give_the_model_size(tmp_path, eval_ops, named):
    _refused(_card(tmp_path, TINY_CARD, "eval = []", f"eval = {eval_ops}"), named)


def test_eval_ops_that_end_at_the_model_size_are_accepted(tmp_path):
    ops = ('[{ op = "resize", size = 48 }, { op = "center_crop", size = 32 }, '
           '{ op = "reinhard", mean = [0, 0, 0], std = [1, 1, 1] }]')
    card = load_card(_card(tmp_path, TINY_CARD, "eval = []", f"eval = {ops}"))
    assert [op["op"] for op in card.preprocess_for().eval] == ["resize", "center_crop", "reinhard"]


@pytest.mark.parametrize(("old", "new", "named"), [
    # Regression: "(KeyError: 'name')", "(KeyError: 'architecture')" and "(TypeError: 'int'
    # object is not iterable)", which named neither the field nor what it must be
    ('name = "resnet10t"\n', "", "architecture.name is missing"),
    ('[architecture]\nname = "resnet10t"\npretrained = "none"\n', "", "architecture.name is miss"),
    ('pretrained = "none"', 'pretrained = "none"\nkwargs = 5', "architecture.kwargs must be a"),
    ('pretrained = "none"', 'pretrained = "none"\nkwargs = 0', "architecture.kwargs must be a"),
    ('pretrained = "none"', 'pretrained = "none"\nhub_model_args = [1]',
     "architecture.hub_model_args must be a table"),
])
def test_a_missing_architecture_or_a_kwargs_that_is_no_table_is_named(tmp_path, old, new, named):
    _refused(_card(tmp_path, TINY_CARD, old, new), named)
