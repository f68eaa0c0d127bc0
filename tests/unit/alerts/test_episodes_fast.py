"""The episode rules' fast path (only pairs with an anomalous window or an open alert are walked, picked with
vectorised selections) gives exactly what walking every pair gives, on random files, alerts and histories."""

from __future__ import annotations

import math

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetscore.alerts import episodes
from fleetscore.alerts.episodes import Persistence, alert_id_for
from tests.helpers.fleet import T0, W

PAIRS = [(f"d-{d}", s) for d in range(3) for s in ("temp", "rh")]
SCORES = st.sampled_from([-0.5, 0.05, 0.5, 5.0, math.nan])


@st.composite
def files(draw) -> dict:
    pairs = draw(st.lists(st.sampled_from(PAIRS), min_size=1, max_size=len(PAIRS), unique=True))
    rows, latest, history = [], [], []
    for device, sensor in pairs:
        for k in draw(st.lists(st.integers(0, 15), min_size=1, max_size=10, unique=True)):
            score = draw(SCORES)
            rows.append({"device": device, "sensor": sensor, "window_end": T0 + k * W, "score": score,
                         "threshold": 0.1, "threshold_strong": draw(st.sampled_from([2.0, math.nan])),
                         "is_anomaly": bool(score > 0.1), "model_version": "v1",
                         "run_id": draw(st.sampled_from(["r1", None]))})
        for status in draw(st.lists(st.sampled_from(["open", "closed"]), max_size=2)):
            last = T0 + draw(st.integers(-6, 12)) * W
            latest.append({"alert_id": alert_id_for(device, sensor, last - W), "device": device, "sensor": sensor,
                           "status": status, "first_window_end": last - W, "last_window_end": last,
                           "last_seen_window_end": last + draw(st.integers(0, 3)) * W, "normal_after": 0,
                           "windows": 2, "max_score": 0.5, "severity": "low", "model_version": "v0", "run_id": "r0",
                           "raised_at": 0, "updated_at": 0, "revision": 1, "delivered_revision": 1,
                           "delivery_attempts": 0, "delivery_error": None})
        for k in draw(st.lists(st.integers(-6, 24), max_size=5, unique=True)):
            history.append({"device": device, "sensor": sensor, "window_end": T0 + k * W, "score": 0.5,
                            "model_version": "v0", "run_id": "r0"})
    k = draw(st.integers(1, 4))
    return {"windows": pd.DataFrame(rows), "latest": pd.DataFrame(latest),
            "history": pd.DataFrame(history, columns=list(episodes.HISTORY_COLUMNS)),
            "persistence": Persistence(k, draw(st.integers(k, 4))), "close_after": draw(st.integers(1, 4))}


def _plain(update: episodes.AlertUpdate) -> tuple:
    return tuple([sorted(map(str, sorted(a.items()))) for a in alerts]
                 for alerts in (update.new, update.changed, update.bookkeeping))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files())
def test_the_fast_path_equals_the_walk_of_every_pair(case):
    rules = episodes._Rules(window_ms=W, persistence=case["persistence"], close_after=case["close_after"],
                            severity_of=lambda mv, d, s, score: "high" if score > 1 else "low", now=7)
    fast = episodes._update(case["windows"], case["latest"], case["history"], rules)
    every = episodes._update(case["windows"], case["latest"].copy(), case["history"], rules, every_pair=True)
    assert _plain(fast) == _plain(every)


def test_a_file_without_anomalies_or_open_alerts_walks_no_pair(monkeypatch):
    rows = pd.DataFrame({"device": ["d-1"] * 3, "sensor": ["temp"] * 3, "window_end": [T0, T0 + W, T0 + 2 * W],
                         "score": [-0.5] * 3, "threshold": 0.1, "threshold_strong": 2.0, "is_anomaly": False,
                         "model_version": "v1", "run_id": "r1"})

    def no_walk(*args, **kwargs):
        raise AssertionError("a pair without anomalies or an open alert was walked")

    monkeypatch.setattr(episodes._PairWalk, "start", no_walk)
    update = episodes.update_alerts(rows, pd.DataFrame(), None, window_ms=W, persistence=Persistence(1, 1),
                                    close_after=3, severity_of=lambda *a: "low", now=1)
    assert not update.visible and not update.bookkeeping
