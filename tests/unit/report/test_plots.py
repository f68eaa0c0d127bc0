"""The pair plot draws each window's model threshold, not a fixed 0, when the prediction files carry it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fleetscore.report.plots import _draw_scores

W = 5 * 60_000


def _scores(threshold: list[float] | None) -> pd.DataFrame:
    ends = 1_767_225_600_000 + W * np.arange(1, 5)
    frame = pd.DataFrame({"window_end": ends, "score": [-1.0, 0.3, 0.8, -0.5]})
    return frame if threshold is None else frame.assign(threshold=threshold)


def _threshold_lines(scores: pd.DataFrame) -> list:
    ax = Figure().add_subplot()
    _draw_scores(ax, SimpleNamespace(scores=scores, anomalies=scores.iloc[:0]))
    return [line for line in ax.get_lines() if line.get_label().startswith("threshold")]


def test_the_models_thresholds_are_drawn_window_by_window():
    (line,) = _threshold_lines(_scores([0.5, 0.5, 0.7, 0.7]))
    assert line.get_label() == "threshold"
    assert set(np.asarray(line.get_ydata(), dtype=float)) == {0.5, 0.7}


def test_files_without_thresholds_are_drawn_against_zero():
    (line,) = _threshold_lines(_scores(None))
    assert line.get_label() == "threshold 0" and set(np.asarray(line.get_ydata(), dtype=float)) == {0.0}
