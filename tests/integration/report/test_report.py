"""The HTML run report: data loaders, the page's structure, and what headless Chromium actually shows."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib import image as mpimg

from fleetscore import db
from fleetscore.report.data import SCORE_COLUMNS, SCORE_KEY_COLUMNS, load_report_data
from fleetscore.report.html import render_report
from fleetscore.report.plots import STATUS_COLOURS
from fleetscore.report.write import write_report

CHROMIUM = "/usr/bin/chromium"
W = 5 * 60_000  # window length, ms
DAY0 = 1_795_392_000_000  # 2026-11-23T00:00:00Z
EVIL = 'd<script>"x"&</script>'  # a device name the page must escape
PAIRS = [(EVIL, "temp"), ("d-0002", "temp"), ("d-0002", "humidity"), ("d-0003", "temp")]
FAULT = range(150, 162)  # window indexes of the injected fault on EVIL/temp (an alert episode, closed)
TAIL = range(283, 288)  # the last windows of d-0002/humidity (an open alert)
RUNS = [  # (run_id, slot window index, status, duration s) — three runs scoring 4 hours each
    ("20261123T1205Z", 144, "succeeded", 31.5),
    ("20261123T1605Z", 192, "succeeded", 44.0),
    ("20261123T2005Z", 240, "failed", 12.0),
    ("20261124T0005Z", 288, "succeeded", 38.2),
]

Blob = namedtuple("Blob", "name etag size last_modified_ms")


class MemStore:
    """Just the two calls the report makes of a blob store."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self.blobs[key] = data

    def list(self, prefix: str) -> list[Blob]:
        return [Blob(k, f'"{len(v)}"', len(v), DAY0) for k, v in sorted(self.blobs.items()) if k.startswith(prefix)]

    def get(self, key: str) -> bytes:
        return self.blobs[key]


def _end(i: int) -> int:
    return DAY0 + (i + 1) * W


def fill(engine, store: MemStore | None = None) -> None:
    """A day of 5-minute windows for four pairs (a sine plus noise), four runs, anomalies, two alerts."""
    rng = np.random.default_rng(7)
    windows, preds = [], []
    for p, (device, sensor) in enumerate(PAIRS):
        base, amp = (21.0, 4.0) if sensor == "temp" else (55.0, 10.0)
        for i in range(288):
            t = np.linspace(i, i + 1, 30, endpoint=False)
            values = base + amp * np.sin(2 * np.pi * t / 288 + p) + rng.normal(0, 0.4, 30)
            anomalous = (p == 0 and i in FAULT) or (p == 2 and i in TAIL)
            if anomalous:
                values = values + 3.5 * amp
            windows.append(dict(device=device, sensor=sensor, window_end=_end(i), n=30, sum=float(values.sum()),
                                sumsq=float((values ** 2).sum()), min=float(values.min()), max=float(values.max()),
                                updated_at=_end(i)))
            if i >= 96:  # windows scored by the runs (the first 8 hours were training data)
                score = float(rng.uniform(0.4, 2.5)) if anomalous else float(rng.uniform(-1.2, -0.05))
                preds.append(dict(device=device, sensor=sensor, window_end=_end(i), n=30, mean=float(values.mean()),
                                  min=float(values.min()), max=float(values.max()), std=float(values.std(ddof=1)),
                                  score=score, is_anomaly=score > 0))
    pred = pd.DataFrame(preds)
    runs, files, anomalies = [], [], []
    for k, (run_id, slot_i, status, duration) in enumerate(RUNS):
        lo, hi = _end(slot_i - 48 - 1), _end(slot_i - 1)
        part = pred[(pred["window_end"] > lo) & (pred["window_end"] <= hi)].copy()
        part["model_version"], part["run_id"], part["status"], part["error"] = "v1", run_id, "ok", None
        claimed = _end(slot_i) + 2_000
        runs.append(dict(run_id=run_id, slot=_end(slot_i), attempt=1, status=status, trigger="timer", backend="local",
                         model_version="v1", window_from=lo, window_until=hi, partitions=1, models=len(PAIRS),
                         windows=len(part), windows_no_model=0, failures=int(status == "failed"),
                         claimed_at=claimed, submitted_at=claimed + 500, finished_at=claimed + int(duration * 1000),
                         timings=json.dumps({"export": 1.2 + k, "score": duration * 0.7, "index": duration * 0.2})))
        name = f"predictions/{run_id}/part-00000.parquet"
        files.append(dict(name=name, etag=f"e{k}", run_id=run_id, status="indexed", attempts=1, rows=len(part),
                          anomalies=int(part["is_anomaly"].sum()), failures=0, windows_no_model=0, indexed_at=hi))
        for r in part[part["is_anomaly"]].itertuples():
            anomalies.append(dict(device=r.device, sensor=r.sensor, window_end=r.window_end, score=r.score,
                                  model_version="v1", run_id=run_id, file_name=name))
        if store is not None:
            table = part.assign(window_end=pd.to_datetime(part["window_end"], unit="ms", utc=True))
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pandas(table, preserve_index=False), buf)
            store.put(name, buf.getvalue())
    alerts = [
        dict(alert_id="a-evil-1", device=EVIL, sensor="temp", status="closed", first_window_end=_end(FAULT[0]),
             last_window_end=_end(FAULT[-1]), last_seen_window_end=_end(191), normal_after=3, windows=len(FAULT),
             max_score=2.4, severity="high", model_version="v1", run_id=RUNS[1][0], raised_at=_end(192),
             updated_at=_end(240), revision=2, delivered_revision=2, delivery_attempts=1),
        dict(alert_id="a-0002-h", device="d-0002", sensor="humidity", status="open", first_window_end=_end(TAIL[0]),
             last_window_end=_end(TAIL[-1]), last_seen_window_end=_end(TAIL[-1]), normal_after=0, windows=len(TAIL),
             max_score=1.9, severity="medium", model_version="v1", run_id=RUNS[3][0], raised_at=_end(288),
             updated_at=_end(288), revision=1, delivered_revision=1, delivery_attempts=1),
    ]
    dead = [dict(received_at=DAY0 + i, source="eventhub", payload='{"value": "NaN"}', reason="invalid_value",
                 detail="value is not a finite number") for i in range(7)]
    dead += [dict(received_at=DAY0 + i, source="eventhub", payload="{not json", reason="bad_json",
                  detail="Expecting property name") for i in range(3)]
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), windows)
        conn.execute(db.runs.insert(), runs)
        conn.execute(db.prediction_files.insert(), files)
        conn.execute(db.anomalies.insert(), anomalies)
        conn.execute(db.alerts.insert(), alerts)
        conn.execute(db.dead_letters.insert(), dead)


def screenshot(html_path: Path, tmp_path: Path) -> np.ndarray:
    """Render the page in headless Chromium as a person would see it; RGB floats in [0, 1]."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (make test installs it)")
    png = tmp_path / (html_path.stem + ".png")
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--window-size=1400,3000", f"--screenshot={png}", html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    pixels = mpimg.imread(str(png))
    assert pixels.shape[:2] == (3000, 1400)
    return pixels[..., :3]


def chart_regions(rgb: np.ndarray, min_len: int = 80, gap: int = 40) -> list[tuple[int, int, int, int]]:
    """Where the charts are on the screenshot: (top, bottom, left, right) pixel boxes.

    Every chart has axes, whose spines are dark vertical lines hundreds of pixels long; text glyphs and
    table rules never are. Spine segments that overlap (or nearly touch) vertically make one chart.
    """
    dark = rgb.max(axis=2) < 0.6
    pad = np.zeros((1, dark.shape[1]), dtype=np.int8)
    edges = np.diff(np.vstack([pad, dark.astype(np.int8), pad]), axis=0)
    segments = []
    for col in range(dark.shape[1]):
        starts, ends = np.flatnonzero(edges[:, col] == 1), np.flatnonzero(edges[:, col] == -1)
        segments += [(a, b, col) for a, b in zip(starts, ends, strict=True) if b - a >= min_len]
    boxes: list[list[int]] = []
    for a, b, col in sorted(segments):
        if boxes and a <= boxes[-1][1] + gap:
            box = boxes[-1]
            box[1], box[2], box[3] = max(box[1], b), min(box[2], col), max(box[3], col)
        else:
            boxes.append([a, b, col, col])
    return [(int(a), int(b), int(left), int(right)) for a, b, left, right in boxes]


def distinct_colours(rgb: np.ndarray) -> int:
    q = (rgb * 255).astype(np.uint8).reshape(-1, 3)
    return len(np.unique(q[:, 0].astype(np.int32) << 16 | q[:, 1].astype(np.int32) << 8 | q[:, 2]))


def test_the_report_reads_the_owners_columns_and_statuses():
    # taken from scoring_job.contract by name: a renamed contract column must not vanish from the plots silently
    assert SCORE_KEY_COLUMNS == ("device", "sensor", "window_end", "score")
    assert SCORE_COLUMNS == SCORE_KEY_COLUMNS + ("threshold", "is_anomaly", "run_id")
    assert set(STATUS_COLOURS) == set(db.RUN_TERMINAL)  # one colour per finished run's status


@pytest.fixture
def filled(sqlite_engine):
    store = MemStore()
    fill(sqlite_engine, store)
    return sqlite_engine, store


def test_loaders_read_the_database_and_prediction_files(filled):
    engine, store = filled
    data = load_report_data(engine, store=store)
    s = data.summary
    assert s["runs"] == 4 and s["runs_by_status"] == {"failed": 1, "succeeded": 3}
    assert s["windows_scored"] == len(PAIRS) * 4 * 48
    assert s["anomalies"] == len(FAULT) + len(TAIL)
    assert (s["open_alerts"], s["closed_alerts"], s["dead_letters"]) == (1, 1, 10)
    assert list(data.dead_letters["reason"]) == ["invalid_value", "bad_json"]
    # the alerted pairs, most severe first; the rest are not plotted
    assert [(p.device, p.sensor) for p in data.pairs] == [(EVIL, "temp"), ("d-0002", "humidity")]
    evil = data.pairs[0]
    assert evil.window_ms == W
    assert len(evil.scores) == 4 * 48 and (evil.scores["score"] > 0).sum() == len(FAULT)
    assert len(evil.anomalies) == len(FAULT) and len(evil.alerts) == 1
    mean = evil.windows.set_index("window_end")["mean"]
    assert mean.loc[_end(FAULT[0])] > mean.loc[_end(FAULT[0] - 3)] + 10
    assert list(data.runs["duration_s"]) == [r[3] for r in RUNS]
    assert list(data.runs["anomalies"]) == [0, len(FAULT), 0, len(TAIL)]
    # without a store: the same pairs, only the anomalies' scores
    bare = load_report_data(engine)
    assert [len(p.scores) for p in bare.pairs] == [0, 0] and len(bare.pairs[0].anomalies) == len(FAULT)
    # one run: its alerts and its prediction file only
    one = load_report_data(engine, store=store, run_id=RUNS[1][0])
    assert [(p.device, p.sensor) for p in one.pairs] == [(EVIL, "temp")]
    assert set(one.pairs[0].scores["run_id"]) == {RUNS[1][0]}
    page = render_report(one)
    assert f"fleetscore report — run {RUNS[1][0]}" in page and page.count("data:image/png") == 4
    with pytest.raises(ValueError, match="no run"):
        load_report_data(engine, run_id="nope")


@pytest.mark.parametrize("with_store", [True, False], ids=["prediction-files", "sql-only"])
def test_report_renders_in_chromium(filled, tmp_path, with_store):
    engine, store = filled
    out = write_report(engine, tmp_path / "report.html", store=store if with_store else None)
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # 2 alerted pairs + runs + time per stage + dead letters, all embedded
    assert page.count('src="data:image/png;base64,') == 5
    assert "http://" not in page and "https://" not in page
    assert EVIL not in page and "d&lt;script&gt;&quot;x&quot;&amp;&lt;/script&gt;" in page
    assert "<script" not in page
    for label in ("runs", "windows scored", "anomalies", "open alerts", "closed alerts", "dead letters"):
        assert f"<span>{label}</span>" in page
    assert "a-evil-1" in page and "2026-11-23T12:35:00Z" in page  # the alert table, times in UTC ISO
    assert ("prediction file" in page) is with_store

    rgb = screenshot(out, tmp_path)
    nonwhite = (rgb.min(axis=2) < 0.94).mean()
    assert nonwhite > 0.05, f"the screenshot is nearly blank ({nonwhite:.3f} non-white)"  # measured 0.13
    charts = chart_regions(rgb)
    # five charts down the page: the two alerted pairs, runs, time per stage, dead letters
    assert len(charts) == 5, charts
    heights = [bottom - top for top, bottom, _, _ in charts]
    assert all(h > 300 for h in heights[:3]) and all(h > 60 for h in heights[3:]), heights
    for top, bottom, left, right in charts:
        assert right - left > 900, charts  # as wide as the page
        region = rgb[top:bottom, left:right + 1]
        # measured: non-white 0.08–0.57, distinct colours 79–2200 per chart
        assert (region.min(axis=2) < 0.94).mean() > 0.05, (top, bottom)
        assert distinct_colours(region) > 50, (top, bottom)
    # the anomalous windows are marked in red on both pair plots (measured 360–790 red pixels)
    anomaly_red = np.array([0xD3, 0x2F, 0x2F]) / 255
    for top, bottom, left, right in charts[:2]:
        red = (np.abs(rgb[top:bottom, left:right + 1] - anomaly_red).max(axis=2) < 0.08).sum()
        assert red > 100, (top, bottom, red)


def test_empty_database_page(sqlite_engine, tmp_path):
    data = load_report_data(sqlite_engine, store=MemStore())
    assert data.summary["runs"] == 0 and data.pairs == [] and data.runs.empty
    out = write_report(sqlite_engine, tmp_path / "empty.html", store=MemStore())
    page = out.read_text(encoding="utf-8")
    assert 'id="no-runs"' in page and "No runs yet" in page
    assert "data:image/png" not in page
    assert "No dead letters." in page
    rgb = screenshot(out, tmp_path)
    assert (rgb.min(axis=2) < 0.94).mean() > 0.002  # the header and the notice are there
    assert chart_regions(rgb) == []  # and no chart
