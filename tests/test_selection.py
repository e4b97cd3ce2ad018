"""Paired bootstrap intervals, the replace-the-default rule and cross-validation fold plans, on constructed numbers."""
import numpy as np
import pytest

from pipeline.crossval import fold_plan, scheme_name
from pipeline.selection import Interval, bootstrap_interval, gain_intervals, gains, verdict


def test_gains_are_positive_when_better_for_every_metric():
    assert list(gains([20.0, 21.0], [21.0, 20.5], "psnr")) == [1.0, -0.5]
    assert list(gains([0.90], [0.95], "ssim")) == pytest.approx([0.05])
    assert list(gains([7.0, 5.0], [6.0, 5.5], "delta_e")) == [1.0, -0.5]  # dE falling is a gain
    with pytest.raises(ValueError):
        gains([1.0, 2.0], [1.0], "psnr")


def test_bootstrap_interval_of_constant_gains_is_that_constant():
    iv = bootstrap_interval([0.3] * 13)
    assert (iv.mean, iv.low, iv.high, iv.n) == pytest.approx((0.3, 0.3, 0.3, 13))


def test_bootstrap_interval_brackets_the_mean_and_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 1.0, 400)
    iv = bootstrap_interval(values, seed=3)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert iv.low < iv.mean < iv.high
    assert iv.low == pytest.approx(values.mean() - 1.96 * se, abs=0.3 * se)
    assert iv.high == pytest.approx(values.mean() + 1.96 * se, abs=0.3 * se)
    assert bootstrap_interval(values, seed=3) == iv  # deterministic for a seed


def test_an_outlier_pair_widens_the_interval_across_zero():
    steady = [0.2, 0.3, 0.25, 0.2, 0.3, 0.25, 0.2, 0.3, 0.25, 0.2, 0.3, 0.25]
    assert bootstrap_interval(steady).low > 0
    assert bootstrap_interval(steady + [-4.0]).low < 0  # one pair that got much worse


def test_verdict_needs_psnr_above_zero_and_no_loss_elsewhere():
    good = Interval(0.3, 0.1, 0.5, 13)
    crossing = Interval(0.2, -0.1, 0.5, 13)
    loss = Interval(-0.001, -0.002, 0.0, 13)
    assert verdict({"psnr": good, "ssim": good, "delta_e": good}).replaces_start
    assert not verdict({"psnr": crossing, "ssim": good, "delta_e": good}).replaces_start
    v = verdict({"psnr": good, "ssim": loss, "delta_e": good})
    assert not v.replaces_start and "SSIM" in v.reason
    assert not verdict({"psnr": good, "ssim": good, "delta_e": loss}).replaces_start


def test_gain_intervals_per_metric_from_paired_scores():
    start = {"psnr": [20, 22, 24], "ssim": [0.9, 0.9, 0.9], "delta_e": [8, 6, 7]}
    better = {"psnr": [21, 23, 25], "ssim": [0.91, 0.91, 0.91], "delta_e": [7, 5, 6]}
    ivs = gain_intervals(start, better)
    assert ivs["psnr"].mean == pytest.approx(1.0) and ivs["psnr"].low == pytest.approx(1.0)
    assert ivs["delta_e"].mean == pytest.approx(1.0)
    assert verdict(ivs).replaces_start


def test_fold_plans_hold_every_pair_out_once_per_repeat():
    ids = [f"p{i}" for i in range(7)]
    loo = fold_plan(ids)
    assert loo == [[i] for i in sorted(ids)] and scheme_name(7, None, 1) == "leave-one-out"
    plan = fold_plan(ids, folds=3, repeats=2, seed=5)
    assert len(plan) == 6
    for r in range(2):
        held = sorted(i for fold in plan[3 * r:3 * r + 3] for i in fold)
        assert held == sorted(ids)
    assert plan[:3] != plan[3:]  # a repeat is another shuffle
    with pytest.raises(ValueError):
        fold_plan(ids, folds=8)
