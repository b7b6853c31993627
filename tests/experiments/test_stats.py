"""The experiments' statistics (experiments/common.py): seeds' t intervals, McNemar on paired
right / wrong, a cluster bootstrap for items that share a task; hand-derived numbers."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
common = importlib.import_module("common")


def test_seed_interval_is_students_t_and_one_seed_supports_nothing():
    # values 0.10, 0.12, 0.14: mean 0.12, sd 0.02, t(2) = 4.303 -> half 4.303 * 0.02 / sqrt 3
    got = common.seed_interval([0.10, 0.12, 0.14])
    half = 4.303 * 0.02 / math.sqrt(3)
    assert (got.mean, got.low, got.high) == pytest.approx((0.12, 0.12 - half, 0.12 + half))
    assert got.excludes_zero and got.verdict() == "a result"
    assert common.seed_interval([0.01, -0.01]).verdict() == "within noise"
    one = common.seed_interval([0.3])
    assert not one.excludes_zero and one.text() == "+0.300 [-inf, +inf], 1 seeds"
    assert common.headline("DrPO held-out reward", common.seed_interval([0.02, 0.01, -0.005])) \
        .endswith("(within noise)")


def test_mcnemar_counts_the_discordant_items_only():
    # 9 items only A right, 1 only B, 20 both right: p = 2 (C(10,0) + C(10,1)) / 2^10
    a = [True] * 9 + [False] + [True] * 20
    b = [False] * 9 + [True] + [True] * 20
    got = common.mcnemar(a, b)
    assert (got["a_only"], got["b_only"]) == (9, 1)
    assert got["p"] == pytest.approx(2 * 11 / 1024)
    assert common.mcnemar([True, False], [True, False])["p"] == 1.0


def test_a_cluster_bootstrap_is_wider_than_pretending_items_are_independent():
    """3 tasks x 8 copies of the same difference (GW-DPO's 3 tasks x 8 constraints): the
    clusters are 3, not 24, and the interval says so."""
    values = [0.5] * 8 + [0.1] * 8 + [-0.3] * 8
    clustered = common.cluster_bootstrap(values, [i // 8 for i in range(24)], seed=1)
    independent = common.cluster_bootstrap(values, list(range(24)), seed=1)
    assert clustered.mean == pytest.approx(0.1) and clustered.n == 3
    assert clustered.high - clustered.low > 1.5 * (independent.high - independent.low)
    assert not clustered.excludes_zero
