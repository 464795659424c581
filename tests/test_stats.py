"""Wilson intervals and the Rogan–Gladen correction with its interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsi_atm.fraction.stats import rogan_gladen, rogan_gladen_interval, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (0, 10, (0.0, 0.2775)),
        (1, 10, (0.0179, 0.4042)),
        (5, 10, (0.2366, 0.7634)),
        (10, 10, (0.7225, 1.0)),
        (50, 100, (0.4038, 0.5962)),
    ],
)
def test_wilson_matches_known_values(k: int, n: int, expected: tuple[float, float]) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=1e-4)
    assert hi == pytest.approx(expected[1], abs=1e-4)


def test_wilson_undefined_without_trials() -> None:
    assert wilson_interval(0, 0) is None


@pytest.mark.parametrize(("k", "n"), [(-1, 10), (11, 10), (0, -1)])
def test_wilson_rejects_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_rogan_gladen_recovers_true_share() -> None:
    sens, spec, truth = 0.75, 0.80, 0.15
    observed = sens * truth + (1 - spec) * (1 - truth)
    assert observed == pytest.approx(0.2825)
    assert rogan_gladen(observed, sens, spec) == pytest.approx(truth)


def test_rogan_gladen_clips_and_is_undefined_at_chance() -> None:
    assert rogan_gladen(0.05, 0.75, 0.80) == 0.0  # fewer calls than false positives alone
    assert rogan_gladen(0.99, 0.75, 0.80) == 1.0
    assert rogan_gladen(0.3, 0.5, 0.5) is None
    assert rogan_gladen(0.3, 0.4, 0.3) is None


def test_rogan_gladen_interval_contains_point_and_widens_with_smaller_validation() -> None:
    k, n = 113, 400  # 0.2825 observed
    point = rogan_gladen(k / n, 0.75, 0.80)
    assert point is not None
    widths = []
    for n_pos, n_neg in [(None, None), (2000, 2000), (200, 200), (40, 40)]:
        lo, hi = rogan_gladen_interval(k, n, 0.75, n_pos, 0.80, n_neg)
        assert 0.0 <= lo <= point <= hi <= 1.0
        widths.append(hi - lo)
    assert widths == sorted(widths)
    assert widths[-1] > 1.5 * widths[0]


def test_rogan_gladen_interval_takes_in_the_rates_spread_between_scanners() -> None:
    # Regression: only binomial error of the rates counted, so the interval covered the truth
    # on 48 % of held-out-scanner pseudo-slides (83 % with the spread, scripts/fraction_study.py)
    k, n = 200, 400  # θ ≈ 0.55: both intervals clear of 0 and 1
    lo, hi = rogan_gladen_interval(k, n, 0.75, 600, 0.80, 2000)
    lo2, hi2 = rogan_gladen_interval(k, n, 0.75, 600, 0.80, 2000, sens_sd=0.07, spec_sd=0.08)
    assert lo2 < lo and hi2 > hi
    # by the delta method: the spread's variance adds, weighted as the binomial one, at θ of
    # the Agresti-Coull adjusted proportions
    z2 = 1.96**2

    def adjusted(rate: float, count: int) -> float:
        return (rate * count + z2 / 2) / (count + z2)

    p, se, sp = adjusted(k / n, n), adjusted(0.75, 600), adjusted(0.80, 2000)
    j = se + sp - 1
    theta = (p + sp - 1) / j
    extra = (theta**2 * 0.07**2 + (1 - theta) ** 2 * 0.08**2) / j**2
    half, half2 = (hi - lo) / 2, (hi2 - lo2) / 2
    assert half2**2 - half**2 == pytest.approx(1.96**2 * extra, rel=1e-6)


def test_rogan_gladen_interval_undefined_cases_and_bounds() -> None:
    assert rogan_gladen_interval(0, 0, 0.75, 100, 0.8, 100) is None
    assert rogan_gladen_interval(3, 10, 0.5, 100, 0.5, 100) is None
    lo, hi = rogan_gladen_interval(0, 50, 0.75, 30, 0.80, 30)
    assert lo == 0.0 and 0.0 <= hi <= 1.0
    lo, hi = rogan_gladen_interval(50, 50, 0.75, 30, 0.80, 30)
    assert hi == 1.0 and 0.0 <= lo <= 1.0


def test_rogan_gladen_interval_coverage_by_simulation() -> None:
    """The delta-method interval covers the true share about 95 % of the time."""
    rng = np.random.default_rng(0)
    truth, sens, spec, n, n_pos, n_neg = 0.15, 0.75, 0.80, 400, 150, 300
    p_obs = sens * truth + (1 - spec) * (1 - truth)
    hits = 0
    trials = 2000
    for _ in range(trials):
        k = int(rng.binomial(n, p_obs))
        se = rng.binomial(n_pos, sens) / n_pos
        sp = rng.binomial(n_neg, spec) / n_neg
        ci = rogan_gladen_interval(k, n, se, n_pos, sp, n_neg)
        assert ci is not None and not any(math.isnan(v) for v in ci)
        hits += ci[0] <= truth <= ci[1]
    assert 0.92 <= hits / trials <= 0.985
