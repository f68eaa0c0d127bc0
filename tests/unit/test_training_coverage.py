"""A model's window coverage: the share of its training range's windows it was trained on."""

from __future__ import annotations

import pandas as pd
import pytest

from fleetscore.training import SPARSE_COVERAGE, sparse_models, window_coverage

W = 300_000
T0 = pd.Timestamp("2026-01-05T00:05:00Z")


def _info(windows_in_range: int, size: int) -> dict:
    return {"from": T0, "until": T0 + pd.Timedelta(milliseconds=(windows_in_range - 1) * W), "size": size}


def test_coverage_is_the_trained_share_of_the_windows_from_first_to_last():
    assert window_coverage(_info(10, 10), W) == 1.0
    assert window_coverage(_info(10, 4), W) == pytest.approx(0.4)
    assert window_coverage(_info(1, 1), W) == 1.0
    assert window_coverage(_info(30, 10), 3 * W) == 1.0  # in 15-minute windows the same range has 10
    as_ms = {"from": T0.value // 1_000_000, "until": T0.value // 1_000_000 + 9 * W, "size": 4}
    assert window_coverage(as_ms, W) == pytest.approx(0.4)  # window ends as epoch ms


def test_a_record_without_range_or_size_counts_as_covered():
    assert window_coverage({"from": None, "until": None, "size": 5}, W) == 1.0
    assert window_coverage({"from": T0, "until": T0, "size": None}, W) == 1.0


def test_sparse_models_are_those_below_the_coverage_bar_in_pair_order():
    training = {("d2", "a"): _info(10, 3), ("d1", "b"): _info(10, 10), ("d1", "a"): _info(100, 49),
                ("d3", "a"): _info(100, int(SPARSE_COVERAGE * 100))}
    assert list(sparse_models(training, W).items()) == [(("d1", "a"), pytest.approx(0.49)),
                                                         (("d2", "a"), pytest.approx(0.3))]
