"""Slide-fraction estimators: calibration, intervals that never collapse, flagged contradictions."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_atm.fraction.estimators import FractionModel, calibrate, estimate, fit_platt
from wsi_atm.train.fraction_study import Predictions, card_fraction, fit_fraction_model, study


def _scores(rng: np.random.Generator, labels: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """An overconfident classifier: logits 3·(true log-odds), shifted per domain."""
    z = np.where(labels == 1, rng.normal(1.0, 1.0, len(labels)), rng.normal(-1.0, 1.0,
                 len(labels)))
    return 1 / (1 + np.exp(-(3 * z + shift)))


def _domains(seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    parts = []
    for g, shift in enumerate((-0.6, 0.0, 0.3, 0.8)):
        labels = (rng.random(600) < 0.22).astype(int)
        slides = np.array([f"g{g}s{i % 12}" for i in range(600)])
        parts.append((_scores(rng, labels, shift), labels, np.full(600, f"d{g}"), slides))
    p, y, grp, sl = (np.concatenate(x) for x in zip(*parts, strict=True))
    return Predictions(p, y, grp, sl)


def test_platt_recovers_a_known_miscalibration():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1.5, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-x))).astype(int)
    p = 1 / (1 + np.exp(-(2.5 * x - 1.0)))  # true log-odds = (logit(p) + 1) / 2.5
    a, b = fit_platt(p, y)
    assert a == pytest.approx(1 / 2.5, abs=0.03) and b == pytest.approx(0.4, abs=0.05)
    q = calibrate(p, a, b)
    assert abs(q.mean() - y.mean()) < 0.01


def test_calibrated_mean_interval_never_collapses_and_adds_the_domain_term():
    p = np.full(400, 1e-9)  # every candidate confidently normal
    fm = FractionModel(threshold=0.5, method="calibrated-mean", shift_sd=0.03)
    e = estimate(p, fm)
    assert e.ci95 is not None and e.ci95[0] == 0.0 and e.ci95[1] >= 1.95 * 0.03
    tight = estimate(p, FractionModel(threshold=0.5, method="calibrated-mean"))
    assert tight.ci95 is not None and tight.ci95[1] > tight.ci95[0]


def test_rogan_gladen_flags_and_widens_when_the_rates_are_contradicted():
    # Old behaviour: a raw share far below 1 - specificity gave the interval [0, 0].
    fm = FractionModel(threshold=0.5, method="rogan-gladen", sensitivity=0.75,
                       specificity=0.74, n_atypical=648, n_normal=2246)
    p = np.array([0.9] * 3 + [0.1] * 97)  # raw share 0.03 < 1 - 0.74
    e = estimate(p, fm)
    assert e.value == 0.0
    assert e.warning and "outside" in e.warning
    assert e.ci95 is not None and e.ci95[1] > 0.05  # includes the raw share's interval
    ok = estimate(np.array([0.9] * 40 + [0.1] * 60), fm)
    assert ok.warning is None and ok.ci95[0] < ok.value < ok.ci95[1]


@pytest.mark.parametrize("method", ["calibrated-mean", "calibrated-em"])
def test_a_slide_scored_unlike_validation_is_flagged(method):
    # Regression: the calibrated estimators never flagged anything, even a slide whose scores
    # no share could produce on the validation scanners
    fm = FractionModel(threshold=0.5, method=method, shift_sd=0.1,
                       extra={"prior": 0.22, "q_atypical": 0.44, "q_normal": 0.16})
    rng = np.random.default_rng(0)
    inside = estimate(rng.uniform(0.1, 0.5, 200), fm)  # identity Platt: mean q ≈ 0.30
    assert inside.warning is None
    low = estimate(np.full(200, 0.05), fm)
    assert low.warning and "below 0.160" in low.warning and "only normal" in low.warning
    high = estimate(np.full(200, 0.7), fm)
    assert high.warning and "above 0.440" in high.warning
    # a few mitoses: sampling noise alone can carry the mean that far
    assert estimate(np.array([0.02, 0.3, 0.05]), fm).warning is None
    # a card without the class means: nothing to check against
    plain = FractionModel(threshold=0.5, method=method, shift_sd=0.1, extra={"prior": 0.22})
    assert estimate(np.full(200, 0.05), plain).warning is None


def test_no_candidates_give_no_estimate_rather_than_a_number():
    for method in ("raw", "rogan-gladen", "calibrated-mean"):
        fm = FractionModel(threshold=0.5, method=method, sensitivity=0.8, specificity=0.8)
        assert estimate(np.zeros(0), fm).value is None
    with pytest.raises(ValueError, match="unknown fraction method"):
        estimate(np.zeros(3), FractionModel(threshold=0.5), "median")


def test_study_is_nested_and_calibration_beats_the_raw_share_out_of_domain():
    pred = _domains()
    result = study(pred, reps=10)
    assert set(result) == {"raw", "rogan-gladen", "calibrated-mean", "calibrated-em",
                           "training share (no slide data)"}
    # the yardstick has no interval, so no coverage; its error is the spread of the shares
    yardstick = result["training share (no slide data)"]["share 0.50"]
    assert yardstick["coverage"] is None and yardstick["bias"] < -0.2
    raw, cal = result["raw"]["pseudo"], result["calibrated-mean"]["pseudo"]
    # 4 groups × 24 (size, share) cells × reps; shares up to 0.5, the range of real slides
    assert raw["n"] == cal["n"] == 4 * 10 * 24
    assert result["calibrated-mean"]["share 0.50"]["n"] == 4 * 10 * 4
    assert result["calibrated-mean"]["share 0.00"]["n"] == 4 * 10 * 4
    assert cal["mae"] < raw["mae"]
    assert result["calibrated-mean"]["pooled"]["n"] == 4
    assert result["raw"]["real"]["n"] == 4 * 12  # 50 crops per slide ≥ 30


def test_card_fraction_is_fitted_on_all_groups():
    pred = _domains(2)
    table = card_fraction(pred, "calibrated-mean")
    fm = fit_fraction_model(pred, "calibrated-mean")
    assert table["platt_a"] == pytest.approx(fm.platt_a, abs=1e-6)
    assert 0 < table["platt_a"] < 1  # the synthetic classifier is overconfident
    assert table["shift_sd"] > 0
    assert 0 < table["q_normal"] < table["prior"] < table["q_atypical"] < 1


def test_a_group_without_one_class_does_not_bound_it():
    # Regression (review): the mean of an empty class was NaN, which max/min kept, so the
    # card got q_atypical = nan (refused by the schema) and the warning never fired
    pred = _domains(4)
    only_normal = (pred.group == "d0") & (pred.labels == 1)
    table = card_fraction(pred.take(~only_normal), "calibrated-mean")
    assert 0 < table["q_normal"] < table["q_atypical"] < 1
    # nor does its undefined sensitivity make the rates' spread NaN
    fm = fit_fraction_model(pred.take(~only_normal), "rogan-gladen")
    assert fm.sensitivity_sd == fm.sensitivity_sd > 0


def test_the_default_cards_fraction_table_rebuilds_from_its_predictions():
    from pathlib import Path

    from wsi_atm.models.registry import find_card
    from wsi_atm.train.fraction_study import load_prediction_table

    repo = Path(__file__).parents[1]
    pred = load_prediction_table(repo / "docs" / "ablation" / "a4-robust-soft-norm.csv")
    assert card_fraction(pred, "calibrated-mean") == find_card(None).fraction


def _write_run(run, pred: Predictions) -> None:
    """A leave-group-out run directory as ``wsi-atm train`` writes it (folds.csv, result.json)."""
    import csv
    import json

    names = [f"c{i}.png" for i in range(len(pred.p))]
    run.mkdir()
    with open(run / "folds.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "group"])
        w.writerows(zip(names, pred.slide, strict=True))
    for k, g in enumerate(sorted(set(pred.group.tolist()))):
        idx = np.flatnonzero(pred.group == g)
        y, p = pred.labels[idx], pred.p[idx]
        metrics = {"balanced_accuracy": 0.7 + k / 100, "auroc": 0.8}
        (run / f"fold_{k}").mkdir()
        (run / f"fold_{k}" / "result.json").write_text(json.dumps({
            "fold": k, "held_out": g, "best_epoch": 3, "epochs_run": 4, "threshold": 0.5,
            "metrics": metrics, "metrics_at_0.5": metrics,
            "predictions": {"names": [names[i] for i in idx], "labels": y.tolist(),
                            "p_atypical": p.tolist()}}))


def test_ablation_table_rebuilds_from_exported_predictions(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ablation", Path(__file__).parents[1] / "scripts" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    pred = _domains(3)
    run = tmp_path / "run"
    _write_run(run, pred)
    groups, cells = ablation.row(run, {}, reps=2)
    assert groups == ["d0", "d1", "d2", "d3"]
    assert cells[0] == "run" and cells[1] == "0.700 / 0.800"
    assert cells[5].startswith("**0.715**")  # mean of 0.70 … 0.73
    ablation.export(run, tmp_path / "out")
    rows = (tmp_path / "out" / "run.csv").read_text().splitlines()
    assert rows[0] == "name,held_out,label,p_atypical" and len(rows) == len(pred.p) + 1
