from __future__ import annotations

import numpy as np
import pytest

from interest_pipeline.bootstrap import compare_methods, paired_bootstrap


def test_identical_samples_give_a_zero_interval():
    a = np.array([0.0, 0.5, 1.0, 0.25])
    out = paired_bootstrap(a, a.copy())
    assert out == {"mean_diff": 0.0, "lo": 0.0, "hi": 0.0, "ratio": 1.0, "n": 4}


def test_a_constant_shift_is_recovered_exactly():
    b = np.random.default_rng(1).random(50)
    out = paired_bootstrap(b + 0.125, b, resamples=500)
    for key in ("mean_diff", "lo", "hi"):
        assert out[key] == pytest.approx(0.125, abs=1e-12)
    assert out["ratio"] == pytest.approx((b.mean() + 0.125) / b.mean())


def test_ratio_is_none_when_the_second_mean_is_zero_and_empty_samples_give_none():
    assert paired_bootstrap([1.0, 0.0], [0.0, 0.0])["ratio"] is None
    assert paired_bootstrap([], []) == {
        "mean_diff": None, "lo": None, "hi": None, "ratio": None, "n": 0
    }
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_same_seed_same_interval_and_pairs_are_resampled_together():
    rng = np.random.default_rng(2)
    b = rng.random(40)
    a = b + rng.normal(0.05, 0.01, 40)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    # Paired: the spread of b across users cancels out, so the interval is narrow (sd of the
    # difference 0.01 / sqrt(40) ≈ 0.0016) although b itself varies over [0, 1).
    out = paired_bootstrap(a, b)
    assert out["lo"] < 0.05 < out["hi"]
    assert out["hi"] - out["lo"] < 0.01


def test_the_interval_covers_the_true_difference_about_as_often_as_its_level():
    rng = np.random.default_rng(3)
    covered = 0
    trials = 100
    for trial in range(trials):
        b = rng.binomial(1, 0.3, 80).astype(float)
        a = b + rng.normal(0.1, 0.2, 80)  # true mean difference 0.1
        out = paired_bootstrap(a, b, resamples=400, seed=trial, level=0.9)
        covered += out["lo"] <= 0.1 <= out["hi"]
    assert 0.8 <= covered / trials <= 0.97


def test_compare_methods_pools_the_pairs_of_every_cut_off():
    samples = [
        {"model": {("ndcg", 10): [1.0, 0.0]}, "pop": {("ndcg", 10): [0.5, 0.0]}},
        {"model": {("ndcg", 10): [1.0]}, "pop": {("ndcg", 10): [0.5]}},
    ]
    out = compare_methods(samples, "model", ["pop"], [("ndcg", 10)], resamples=200)
    assert out["pop"]["ndcg@10"]["n"] == 3
    assert out["pop"]["ndcg@10"]["mean_diff"] == pytest.approx(1 / 3)
    assert out["pop"]["ndcg@10"]["ratio"] == pytest.approx(2.0)
    assert out["pop"]["ndcg@10"] == paired_bootstrap([1, 0, 1], [0.5, 0, 0.5], resamples=200)
