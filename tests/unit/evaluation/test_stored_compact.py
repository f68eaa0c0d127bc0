"""`stored.compact_scored`: the scored windows of a range read a file at a time into a compact frame, a window
scored again keeping the row of the file read last, as `load_scored_windows` does."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from fleetscore.evaluation import stored
from fleetscore.report.data import load_scored_windows
from fleetscore.storage.folder import FolderStore
from fleetscore.storage.paths import predictions_prefix

W = 300_000


def _put(store: FolderStore, run_id: str, rows: list[tuple[str, str, int, float, str]]) -> None:
    frame = pd.DataFrame(rows, columns=["device", "sensor", "window_end", "score", "status"])
    frame["window_end"] = pd.to_datetime(frame["window_end"], unit="ms", utc=True)
    frame = frame.assign(threshold=1.0, threshold_strong=5.0, is_anomaly=frame["score"] > 1.0, model_version="v1",
                         run_id=run_id)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    store.put(f"{predictions_prefix(run_id)}/part-00000.parquet", buf.getvalue())


def test_compact_scored_keeps_the_last_files_row_and_numbers_the_pairs_densely(tmp_path):
    store = FolderStore(tmp_path / "blobs")
    _put(store, "r1", [("d-2", "temp", W, 0.5, "ok"), ("d-1", "temp", W, 0.1, "ok"), ("d-1", "temp", 2 * W, 0.2, "ok"),
                       ("d-1", "hum", W, np.nan, "no_model")])
    _put(store, "r2", [("d-1", "temp", 2 * W, 3.0, "ok"), ("d-1", "temp", 3 * W, 0.3, "ok"),
                       ("d-3", "hum", 9 * W, 0.9, "ok")])  # d-3's window is outside the range
    got = stored.compact_scored(store, ["r1", "r2"], 0, 3 * W, [])
    assert [tuple(r) for r in got[["device", "sensor", "window_end", "score", "pair"]].astype(object).to_numpy()] == [
        ("d-1", "temp", W, 0.1, 0), ("d-1", "temp", 2 * W, 3.0, 0), ("d-1", "temp", 3 * W, 0.3, 0),
        ("d-2", "temp", W, 0.5, 1)]
    assert isinstance(got["device"].dtype, pd.CategoricalDtype)
    whole = load_scored_windows(store, ["r1", "r2"], stored.EXTRA_COLUMNS)[0]
    expected = stored._scored_in(whole, 0, 3 * W).sort_values(["device", "sensor", "window_end"])
    mine = got.astype({"device": str, "sensor": str}).sort_values(["device", "sensor", "window_end"])
    assert mine["score"].tolist() == expected["score"].tolist()  # the same windows and scores as the whole read


def test_compact_scored_of_nothing_is_empty(tmp_path):
    assert stored.compact_scored(FolderStore(tmp_path / "blobs"), ["r1"], 0, W, []).empty
