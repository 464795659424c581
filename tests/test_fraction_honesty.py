"""The slide estimates' honesty where they were found wanting: high true shares, flags that fired
on noise, small-sample Rogan-Gladen coverage. Checked on the default model's real leave-scanner-
out predictions (``docs/ablation``) and by exact binomial sums."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from wsi_atm.fraction.estimators import FractionModel, estimate
from wsi_atm.models.registry import find_card
from wsi_atm.train.fraction_study import card_fraction_model, load_prediction_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default() -> FractionModel:
    return card_fraction_model(find_card(None))


@pytest.fixture(scope="module")
def validation() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = load_prediction_table(REPO / "docs" / "ablation" / "a4-robust-soft-norm.csv")
    return pred.p, pred.labels, pred.group


def test_a_slide_of_only_atypical_mitoses_is_flagged_and_its_interval_widened(
        default: FractionModel, validation: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    # Regression: the calibrated mean of every scanner's atypical crops read 0.39-0.56 with an
    # interval below 0.82 and no warning: it cannot rise above what validation's slides gave
    p, labels, groups = validation
    for group in np.unique(groups):
        atypical = p[(groups == group) & (labels == 1)]
        e = estimate(atypical, default)
        assert e.warning and "beyond the shares" in e.warning, group
        assert e.ci95 is not None and e.ci95[1] >= 0.9, (group, e.ci95)


def test_pseudo_slides_of_validated_shares_are_rarely_flagged(
        default: FractionModel, validation: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    p, labels, groups = validation
    rng = np.random.default_rng(0)
    flagged = covered = 0
    for _ in range(300):
        group = rng.choice(np.unique(groups))
        n_aty = rng.binomial(100, 0.2)
        idx = np.concatenate([
            rng.choice(np.flatnonzero((groups == group) & (labels == 1)), n_aty),
            rng.choice(np.flatnonzero((groups == group) & (labels == 0)), 100 - n_aty)])
        e = estimate(p[idx], default)
        flagged += e.warning is not None
        covered += e.ci95[0] <= n_aty / 100 <= e.ci95[1]  # type: ignore[index]
    assert flagged <= 9 and covered >= 285


def test_a_flagged_high_share_interval_takes_in_the_scanner_to_scanner_spread(
        default: FractionModel, validation: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    # Regression: the default card gave no spread of its rates between scanners, so a flagged
    # slide's widened (Rogan-Gladen) interval counted sampling error alone: pseudo-slides of
    # 300 mitoses, all atypical, from one held-out scanner were covered 83 % of the time
    p, labels, groups = validation
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        group = rng.choice(np.unique(groups))
        idx = rng.choice(np.flatnonzero((groups == group) & (labels == 1)), 300)
        e = estimate(p[idx], default)
        assert e.warning is not None and e.ci95 is not None
        covered += e.ci95[1] >= 1.0
    assert covered >= 190


RG = FractionModel(threshold=0.5, method="rogan-gladen", sensitivity=0.739198,
                   specificity=0.741318, n_atypical=648, n_normal=2246)


def _calls(k: int, n: int) -> np.ndarray:
    return np.r_[np.ones(k), np.zeros(n - k)]


def test_rogan_gladen_flags_contradictions_not_sampling_noise() -> None:
    # Regression: with the card's rates exactly true and a true share of 0, half of all slides
    # (the raw share falls below 1 - specificity half the time) were flagged, at any size
    n, fp = 1000, 1 - RG.specificity  # type: ignore[operator]
    flagged = sum(binom.pmf(k, n, fp) for k in range(n + 1)
                  if estimate(_calls(k, n), RG).warning)
    assert flagged < 0.03  # a 95 % interval wholly outside: 2.5 % by chance, was 50 %
    # and the interval no longer jumps where the flag used to switch on
    a, b = (estimate(_calls(k, n), RG).ci95 for k in (258, 259))
    assert a is not None and b is not None and abs(a[1] - b[1]) < 0.01
    assert estimate(_calls(150, n), RG).warning  # 0.15, far below 0.259: contradicted


@pytest.mark.parametrize("n", [20, 30, 40])
def test_rogan_gladen_interval_covers_at_small_n(n: int) -> None:
    # Regression: centred on the unadjusted share, 95 % intervals covered 0.885 at n = 20
    truth = 0.5
    q = truth * RG.sensitivity + (1 - truth) * (1 - RG.specificity)  # type: ignore[operator]
    coverage = 0.0
    for k in range(n + 1):
        ci = estimate(_calls(k, n), RG).ci95
        assert ci is not None
        coverage += binom.pmf(k, n, q) * (ci[0] <= truth <= ci[1])
    assert coverage >= 0.94


def test_the_high_share_flag_holds_at_another_threshold() -> None:
    # Regression (review): --threshold dropped the card's rates, and with them the flag, while
    # the calibrated headline (which ignores thresholds) stayed, reading low with no warning
    from dataclasses import replace

    from tests.test_outputs import make_result
    from wsi_atm.outputs.summary import corrected_estimate

    card = find_card(None)
    rows = [(f"c{i}", 100.0 + i, 200.0, 0.9, "ok", "classified", 0.45, False)
            for i in range(100)]
    result = make_result(rows, fraction=dict(card.fraction))
    rates = {"threshold": card.threshold, "sensitivity": card.metrics["sensitivity"],
             "specificity": card.metrics["specificity"]}
    result.model = replace(result.model, threshold=0.4, sensitivity=None, specificity=None,
                           card_rates=rates)
    est = corrected_estimate(result)
    assert est is not None and est.warning and "beyond the shares" in est.warning
    result.model = replace(result.model, card_rates={})
    est = corrected_estimate(result)
    assert est is not None and not est.warning  # what --threshold runs got before


@pytest.mark.parametrize(("sens", "spec"), [(0.5, 0.5), (0.45, 0.4)])
def test_a_card_no_better_than_chance_says_why_there_is_no_estimate(sens: float,
                                                                   spec: float) -> None:
    # Regression: the corrected estimate was null with no word; the summary's note blamed a
    # changed threshold or TTA, neither of which the run used
    from tests.test_outputs import make_result
    from wsi_atm.outputs.summary import build_summary

    rows = [(f"c{i}", 100.0 + i, 200.0, 0.9, "ok", "classified", 0.9 if i < 30 else 0.1, False)
            for i in range(100)]
    summary = build_summary(make_result(rows, sensitivity=sens, specificity=spec))
    assert summary["atypical_fraction_corrected"] is None
    assert any("no better than chance" in w for w in summary["warnings"])
    useful = build_summary(make_result(rows, sensitivity=0.75, specificity=0.74))
    assert useful["atypical_fraction_corrected"] is not None
    assert not any("chance" in w for w in useful["warnings"])
    empty = build_summary(make_result([], sensitivity=sens, specificity=spec))
    assert not any("chance" in w for w in empty["warnings"])  # no calls: nothing to correct


def test_a_card_naming_rogan_gladen_no_better_than_chance_says_why() -> None:
    # Regression: a card whose [fraction] table names rogan-gladen got a null estimate with no
    # warning, the note blaming a changed threshold or TTA that the run did not use
    from tests.test_outputs import make_result
    from wsi_atm.outputs.summary import build_summary

    rows = [(f"c{i}", 100.0 + i, 200.0, 0.9, "ok", "classified", 0.9 if i < 30 else 0.1, False)
            for i in range(100)]
    summary = build_summary(make_result(rows, sensitivity=0.5, specificity=0.45,
                                        fraction={"method": "rogan-gladen"}))
    assert summary["atypical_fraction_corrected"] is None
    assert any("no better than chance" in w for w in summary["warnings"])


def test_the_picture_says_why_a_chance_level_card_gives_no_estimate() -> None:
    # Regression: only summary.json said it; the review picture showed no line at all
    from tests.test_outputs import make_result
    from wsi_atm.outputs.figures import _corrected_line

    rows = [(f"c{i}", 100.0 + i, 200.0, 0.9, "ok", "classified", 0.9 if i < 30 else 0.1, False)
            for i in range(100)]
    line = _corrected_line(make_result(rows, sensitivity=0.5, specificity=0.45))
    assert line is not None and "no better than chance" in line
    assert _corrected_line(make_result([], sensitivity=0.5, specificity=0.45)) is None


def test_the_review_picture_shows_the_summarys_interval() -> None:
    # Regression: the picture (and the console) used z = 1.96, the summary 1.959964: 0 atypical
    # of 3 read 95 % CI 0.0 %-56.2 % on the picture, 56.1 % in the summary and the batch report
    from tests.test_outputs import make_result
    from wsi_atm.outputs.figures import _header_lines
    from wsi_atm.outputs.summary import build_summary

    for k, n in ((0, 3), (3, 3), (0, 12), (4, 26)):
        rows = [(f"c{i}", 100.0 + i, 200.0, 0.9, "ok", "classified", 0.9 if i < k else 0.1,
                 False) for i in range(n)]
        result = make_result(rows)
        lo, hi = build_summary(result)["atypical_fraction"]["ci95"]
        assert f"(95% CI {lo:.1%} - {hi:.1%}, Wilson)" in _header_lines(result)[1][1]
