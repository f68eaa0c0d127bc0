"""The run report: one self-contained HTML file with plots a person would rather look at than read.

Two halves, kept apart so each is testable on its own:

- `load_report_data(engine, store, run_id)` reads SQL (and, when a blob store is given, the prediction
  files) into plain DataFrames: summary numbers, runs, alerts, dead letters by reason, and the window
  series of the alerted pairs with their scores, anomalies and alert spans.
- `render_report(data)` turns a `ReportData` into HTML; the plots are drawn with matplotlib's
  object-oriented API (`matplotlib.figure.Figure` on the Agg canvas, no pyplot global state) and
  embedded as base64 PNG, so the file opens anywhere without a server or a network.

All times in the database are epoch ms UTC; the report shows them as UTC ISO-8601.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import sqlalchemy as sa
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from sqlalchemy.engine import Engine

from fleetscore import clock, db
from fleetscore.storage.paths import PREDICTIONS, predictions_prefix

log = logging.getLogger(__name__)

SEVERITY_RANK = {"critical": 4, "high": 3, "major": 3, "medium": 2, "warning": 2, "low": 1, "minor": 1}
"""Severity words, most severe highest; an unknown word ranks 0 and ties break on max_score."""

MAX_ALERT_ROWS = 200
MAX_RUNS = 1000
MAX_POINTS_PER_PAIR = 5000
DEFAULT_WINDOW_MS = 5 * 60_000
PREDICTION_COLUMNS = ("device", "sensor", "window_end", "score", "is_anomaly", "run_id")

STATUS_COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "partial": "#ef6c00"}
OTHER_STATUS_COLOUR = "#78909c"


class BlobLister(Protocol):
    """What the report needs from a blob store (`fleetscore.storage.base.BlobStore`)."""

    def list(self, prefix: str) -> list[Any]: ...  # items with a `.name`

    def get(self, key: str) -> bytes: ...


@dataclass
class PairData:
    """One device+sensor pair's series for the plot."""

    device: str
    sensor: str
    window_ms: int
    windows: pd.DataFrame
    """window_end (int ms), n, mean, min, max — sorted by window_end."""
    scores: pd.DataFrame
    """window_end, score, is_anomaly, run_id — scored windows from prediction files (empty without a store)."""
    anomalies: pd.DataFrame
    """window_end, score, run_id — from the anomalies table."""
    alerts: pd.DataFrame
    """The pair's alerts (rows of the alerts table)."""


@dataclass
class ReportData:
    generated_at_ms: int
    run_id: str | None
    summary: dict[str, Any]
    runs: pd.DataFrame
    """One row per run, oldest first: run_id, slot, status, backend, model_version, claimed_at, finished_at,
    duration_s, windows, windows_no_model, failures, anomalies, timings (dict)."""
    alerts: pd.DataFrame
    """Alerts, most severe first (at most MAX_ALERT_ROWS)."""
    dead_letters: pd.DataFrame
    """reason, count — most frequent first."""
    pairs: list[PairData] = field(default_factory=list)
    scores_source: str = "none"
    notes: list[str] = field(default_factory=list)
    selected_run: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------- loading


def _frame(conn: sa.Connection, query: sa.Select) -> pd.DataFrame:
    result = conn.execute(query)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _severity_order(alerts: pd.DataFrame) -> pd.DataFrame:
    if alerts.empty:
        return alerts
    ranked = alerts.assign(
        _rank=alerts["severity"].astype(str).str.lower().map(SEVERITY_RANK).fillna(0),
        _open=(alerts["status"] == "open").astype(int),
    )
    ranked = ranked.sort_values(["_rank", "max_score", "_open", "last_window_end"],
                                ascending=[False, False, False, False], kind="stable")
    return ranked.drop(columns=["_rank", "_open"]).reset_index(drop=True)


def _load_runs(conn: sa.Connection) -> pd.DataFrame:
    r = db.runs.c
    runs = _frame(conn, sa.select(r.run_id, r.slot, r.status, r.backend, r.model_version, r.window_from,
                                  r.window_until, r.partitions, r.models, r.windows, r.windows_no_model,
                                  r.failures, r.claimed_at, r.submitted_at, r.finished_at, r.timings)
                  .order_by(r.slot.desc()).limit(MAX_RUNS))
    if runs.empty:
        return runs.assign(duration_s=pd.Series(dtype=float), anomalies=pd.Series(dtype=float))
    runs = runs.iloc[::-1].reset_index(drop=True)
    finished = pd.to_numeric(runs["finished_at"], errors="coerce")
    claimed = pd.to_numeric(runs["claimed_at"], errors="coerce")
    runs["duration_s"] = (finished - claimed) / 1000.0
    runs["timings"] = runs["timings"].map(_parse_timings)
    # anomalies per run: what the indexed prediction files counted, else what the anomalies table holds
    pf = db.prediction_files.c
    per_file = dict(conn.execute(sa.select(pf.run_id, sa.func.sum(pf.anomalies))
                                 .where(pf.run_id.is_not(None)).group_by(pf.run_id)).all())
    a = db.anomalies.c
    per_table = dict(conn.execute(sa.select(a.run_id, sa.func.count())
                                  .where(a.run_id.is_not(None)).group_by(a.run_id)).all())
    runs["anomalies"] = [
        float(per_file[rid]) if per_file.get(rid) is not None else float(per_table.get(rid, 0))
        for rid in runs["run_id"]
    ]
    for col in ("windows", "windows_no_model", "failures", "partitions", "models"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    return runs


def _parse_timings(text: Any) -> dict[str, float]:
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        return {}
    if not isinstance(parsed, dict):
        return {}
    out = {}
    for k, v in parsed.items():
        if isinstance(v, (int, float)) and np.isfinite(v):
            out[str(k)] = float(v)
    return out


def _pair_range(runs: pd.DataFrame, selected: dict | None, alerts: pd.DataFrame) -> tuple[int | None, int | None]:
    """The window_end range to plot: the scored range (of one run, or of all) with context before it."""
    scope = runs if selected is None else runs[runs["run_id"] == selected["run_id"]]
    lo = pd.to_numeric(scope.get("window_from"), errors="coerce").min() if not scope.empty else np.nan
    hi = pd.to_numeric(scope.get("window_until"), errors="coerce").max() if not scope.empty else np.nan
    if not alerts.empty:
        lo = np.nanmin([lo, alerts["first_window_end"].min()])
        hi = np.nanmax([hi, alerts["last_window_end"].max()])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None, None
    span = max(int(hi - lo), 1)
    return int(lo - span // 2), int(hi)


def _choose_pairs(alerts: pd.DataFrame, anomalous: pd.DataFrame, max_pairs: int) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for device, sensor in zip(alerts.get("device", []), alerts.get("sensor", []), strict=False):
        if (device, sensor) not in pairs:
            pairs.append((device, sensor))
    if not pairs:  # no alert yet: the pairs with the most anomalous windows
        pairs = list(zip(anomalous["device"], anomalous["sensor"], strict=False))
    return pairs[:max_pairs]


def _infer_window_ms(ends: np.ndarray) -> int:
    if len(ends) < 2:
        return DEFAULT_WINDOW_MS
    diffs = np.diff(np.sort(ends))
    diffs = diffs[diffs > 0]
    return int(np.min(diffs)) if len(diffs) else DEFAULT_WINDOW_MS


def _to_ms(series: pd.Series) -> pd.Series:
    """A window_end column (timestamp of any unit/zone, or integers) as epoch ms int64."""
    if pd.api.types.is_datetime64_any_dtype(series):
        if series.dt.tz is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.astype("datetime64[ms]").astype("int64")
    return pd.to_numeric(series, errors="coerce").astype("int64")


def _runs_in(runs: pd.DataFrame, lo: int | None, hi: int | None) -> list[str] | None:
    """Ids of the runs whose window range overlaps (lo, hi]: only their prediction files hold scores the
    plots show (None — every file — when the range is unknown)."""
    if runs.empty or lo is None or hi is None:
        return None
    start = pd.to_numeric(runs["window_from"], errors="coerce")
    end = pd.to_numeric(runs["window_until"], errors="coerce")
    return sorted(runs.loc[(end > lo) & (start < hi), "run_id"].astype(str))


def _load_scores(store: BlobLister, run_ids: list[str] | None, pairs: list[tuple[str, str]],
                 notes: list[str]) -> tuple[pd.DataFrame, int]:
    """Scores of the chosen pairs from the prediction files; (frame, number of files read)."""
    empty = pd.DataFrame({"device": pd.Series(dtype=object), "sensor": pd.Series(dtype=object),
                          "window_end": pd.Series(dtype="int64"), "score": pd.Series(dtype=float),
                          "is_anomaly": pd.Series(dtype=bool), "run_id": pd.Series(dtype=object)})
    prefixes = [f"{PREDICTIONS}/"] if run_ids is None else [f"{predictions_prefix(rid)}/" for rid in run_ids]
    wanted = pd.MultiIndex.from_tuples(pairs, names=["device", "sensor"]) if pairs else None
    frames = []
    files = 0
    for prefix in prefixes:
        try:
            names = sorted(b.name for b in store.list(prefix) if b.name.endswith(".parquet"))
        except Exception as exc:  # a missing container or an unreachable store: plot without scores
            notes.append(f"could not list {prefix}: {type(exc).__name__}")
            log.warning("report: could not list %s: %s", prefix, exc)
            continue
        for name in names:
            try:
                source = pq.ParquetFile(io.BytesIO(store.get(name)))
                cols = [c for c in PREDICTION_COLUMNS if c in source.schema_arrow.names]
                if not {"device", "sensor", "window_end", "score"} <= set(cols):
                    raise ValueError(f"not a prediction file (columns {source.schema_arrow.names})")
                table = source.read(columns=cols)
            except Exception as exc:
                notes.append(f"could not read {name}: {type(exc).__name__}")
                log.warning("report: could not read %s: %s", name, exc)
                continue
            files += 1
            frame = table.to_pandas()
            if wanted is not None:
                frame = frame[pd.MultiIndex.from_frame(frame[["device", "sensor"]]).isin(wanted)]
            if frame.empty:
                continue
            frame = frame.assign(window_end=_to_ms(frame["window_end"]), _order=files)
            frames.append(frame)
    if not frames:
        return empty, files
    scores = pd.concat(frames, ignore_index=True)
    for col in ("is_anomaly", "run_id"):
        if col not in scores:
            scores[col] = (scores["score"] > 0) if col == "is_anomaly" else None
    scores["score"] = pd.to_numeric(scores["score"], errors="coerce")
    # a window scored again (a re-run) shows its newest score
    scores = scores.sort_values("_order", kind="stable").drop_duplicates(
        ["device", "sensor", "window_end"], keep="last")
    return scores.drop(columns="_order").reset_index(drop=True), files


def load_report_data(engine: Engine, store: BlobLister | None = None, run_id: str | None = None,
                     max_pairs: int = 12) -> ReportData:
    """Everything the report shows, as DataFrames; `run_id` focuses pairs, alerts and scores on one run."""
    notes: list[str] = []
    a, al, w, dl = db.anomalies.c, db.alerts.c, db.windows.c, db.dead_letters.c
    with engine.connect() as conn:
        runs = _load_runs(conn)
        run_count = conn.execute(sa.select(sa.func.count()).select_from(db.runs)).scalar_one()
        by_status = dict(conn.execute(sa.select(db.runs.c.status, sa.func.count())
                                      .group_by(db.runs.c.status)).all())
        windows_scored = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(db.runs.c.windows), 0))).scalar_one()
        anomaly_count = conn.execute(sa.select(sa.func.count()).select_from(db.anomalies)).scalar_one()
        alert_counts = dict(conn.execute(sa.select(al.status, sa.func.count()).group_by(al.status)).all())
        dead = _frame(conn, sa.select(dl.reason, sa.func.count().label("count"))
                      .group_by(dl.reason).order_by(sa.func.count().desc(), dl.reason))
        window_count = conn.execute(sa.select(sa.func.count()).select_from(db.windows)).scalar_one()
        alert_cols = [al.alert_id, al.device, al.sensor, al.status, al.severity, al.first_window_end,
                      al.last_window_end, al.windows, al.max_score, al.model_version, al.run_id,
                      al.raised_at, al.updated_at]

        selected = None
        alert_query = sa.select(*alert_cols)
        anomalous_query = sa.select(a.device, a.sensor, sa.func.count().label("n"), sa.func.max(a.score).label("s"))
        if run_id is not None:
            row = conn.execute(sa.select(db.runs).where(db.runs.c.run_id == run_id)).mappings().first()
            if row is None:
                raise ValueError(f"no run {run_id!r} in the database")
            selected = dict(row)
            lo, hi = selected.get("window_from"), selected.get("window_until")
            scope = al.run_id == run_id
            if lo is not None and hi is not None:  # alerts whose episode overlaps the run's windows
                scope = sa.or_(scope, sa.and_(al.last_window_end > lo, al.first_window_end <= hi))
            alert_query = alert_query.where(scope)
            anomalous_query = anomalous_query.where(a.run_id == run_id)
        severity = sa.case({k: v for k, v in SEVERITY_RANK.items()}, value=sa.func.lower(al.severity), else_=0)
        alerts = _severity_order(_frame(conn, alert_query.order_by(severity.desc(), al.max_score.desc())
                                        .limit(5 * MAX_ALERT_ROWS)))
        anomalous = _frame(conn, anomalous_query.group_by(a.device, a.sensor)
                           .order_by(sa.func.count().desc(), sa.func.max(a.score).desc()).limit(max_pairs))
        pairs = _choose_pairs(alerts, anomalous, max_pairs)
        lo, hi = _pair_range(runs, selected, alerts)

        pair_rows = []
        for device, sensor in pairs:
            cond = sa.and_(w.device == device, w.sensor == sensor)
            if lo is not None:
                cond = sa.and_(cond, w.window_end > lo, w.window_end <= hi)
            wins = _frame(conn, sa.select(w.window_end, w.n, w.sum, w.min, w.max).where(cond)
                          .order_by(w.window_end.desc()).limit(MAX_POINTS_PER_PAIR))
            acond = sa.and_(a.device == device, a.sensor == sensor)
            if lo is not None:
                acond = sa.and_(acond, a.window_end > lo, a.window_end <= hi)
            anoms = _frame(conn, sa.select(a.window_end, a.score, a.run_id).where(acond).order_by(a.window_end))
            pair_rows.append((device, sensor, wins, anoms))

    summary = {
        "runs": int(run_count),
        "runs_by_status": {str(k): int(v) for k, v in sorted(by_status.items(), key=lambda kv: str(kv[0]))},
        "windows": int(window_count),
        "windows_scored": int(windows_scored or 0),
        "anomalies": int(anomaly_count),
        "open_alerts": int(alert_counts.get("open", 0)),
        "closed_alerts": int(alert_counts.get("closed", 0)),
        "dead_letters": int(dead["count"].sum()) if not dead.empty else 0,
    }
    if selected is not None:
        match = runs[runs["run_id"] == run_id]
        selected["anomalies"] = int(match["anomalies"].iloc[0]) if not match.empty else 0

    scores = None
    scores_source = "the anomalies table only (no blob store)"
    if store is not None:
        scores_source = "prediction files (none needed: no alerted pair)"
        if pairs:
            scores, files = _load_scores(store, [run_id] if run_id is not None else _runs_in(runs, lo, hi),
                                         pairs, notes)
            scores_source = f"{files} prediction file(s)"

    pair_data = []
    for device, sensor, wins, anoms in pair_rows:
        wins = wins.iloc[::-1].reset_index(drop=True)
        n = pd.to_numeric(wins["n"], errors="coerce")
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(n > 0, pd.to_numeric(wins["sum"], errors="coerce") / n, np.nan)
        series = pd.DataFrame({"window_end": wins["window_end"].astype("int64"), "n": n, "mean": mean,
                               "min": pd.to_numeric(wins["min"]), "max": pd.to_numeric(wins["max"])})
        if scores is not None and not scores.empty:
            mine = scores[(scores["device"] == device) & (scores["sensor"] == sensor)]
            if lo is not None:
                mine = mine[(mine["window_end"] > lo) & (mine["window_end"] <= hi)]
            mine = mine[["window_end", "score", "is_anomaly", "run_id"]].sort_values("window_end")
        else:
            mine = pd.DataFrame({"window_end": pd.Series(dtype="int64"), "score": pd.Series(dtype=float),
                                 "is_anomaly": pd.Series(dtype=bool), "run_id": pd.Series(dtype=object)})
        pair_alerts = alerts[(alerts["device"] == device) & (alerts["sensor"] == sensor)] \
            if not alerts.empty else alerts
        window_ms = _infer_window_ms(series["window_end"].to_numpy())
        pair_data.append(PairData(device=device, sensor=sensor, window_ms=window_ms, windows=series,
                                  scores=mine.reset_index(drop=True), anomalies=anoms,
                                  alerts=pair_alerts.reset_index(drop=True)))

    return ReportData(generated_at_ms=clock.now_ms(), run_id=run_id, summary=summary, runs=runs,
                      alerts=alerts.head(MAX_ALERT_ROWS), dead_letters=dead, pairs=pair_data,
                      scores_source=scores_source, notes=notes, selected_run=selected)


# -------------------------------------------------------------------------------------------- plotting


def iso(ms: Any) -> str:
    """Epoch ms UTC as ISO-8601 with a Z ('' for missing)."""
    if ms is None or (isinstance(ms, float) and not np.isfinite(ms)) or pd.isna(ms):
        return ""
    dt = datetime.fromtimestamp(int(ms) / 1000.0, tz=timezone.utc)
    if int(ms) % 1000 == 0:
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def _dt(ms: Any) -> np.ndarray:
    """Epoch ms → naive datetime64 (UTC) for matplotlib's date axis."""
    return np.asarray(ms, dtype="int64").astype("datetime64[ms]")


def _mpl_text(text: str) -> str:
    """Database text for a matplotlib label: no mathtext from a stray '$'."""
    return str(text).replace("$", r"\$")


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _date_axis(ax) -> None:
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def plot_pair(pair: PairData) -> str:
    """The pair's window means with a min–max band, scores against the 0 threshold, anomalies and alert spans."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    wins = pair.windows
    x = _dt(wins["window_end"])
    for _, alert in pair.alerts.iterrows():
        start = _dt([int(alert["first_window_end"]) - pair.window_ms])[0]
        end = _dt([int(alert["last_window_end"])])[0]
        colour = "#ef5350" if alert["status"] == "open" else "#ffb74d"
        for ax in (top, bottom):
            ax.axvspan(start, end, color=colour, alpha=0.22, lw=0)
    if not wins.empty:
        top.fill_between(x, wins["min"], wins["max"], color="#90caf9", alpha=0.55, lw=0, label="min–max")
        top.plot(x, wins["mean"], color="#1565c0", lw=1.2, label="mean")
    anomalous = set(pair.anomalies["window_end"].astype("int64")) if not pair.anomalies.empty else set()
    if not pair.scores.empty:
        anomalous |= set(pair.scores.loc[pair.scores["score"] > 0, "window_end"].astype("int64"))
    marks = wins[wins["window_end"].isin(anomalous)] if anomalous else wins.iloc[:0]
    if not marks.empty:
        top.scatter(_dt(marks["window_end"]), marks["mean"], s=22, color="#d32f2f", zorder=5,
                    label="anomalous window")
    top.set_ylabel("value")
    top.grid(alpha=0.3)

    scored = pair.scores.dropna(subset=["score"])
    if not scored.empty:
        bottom.plot(_dt(scored["window_end"]), scored["score"], color="#6a1b9a", lw=1.0, marker=".", ms=3,
                    label="score")
    anoms = pair.anomalies
    if not anoms.empty:
        bottom.scatter(_dt(anoms["window_end"]), anoms["score"], s=22, color="#d32f2f", zorder=5,
                       label="_nolegend_")
    bottom.axhline(0.0, color="#424242", lw=1, ls="--", label="threshold 0")
    low, high = bottom.get_ylim()
    bottom.set_ylim(low, max(high, 0.15 * (high - low)))  # the threshold never sits on the frame
    bottom.set_ylabel("score")
    bottom.set_xlabel("window end (UTC)")
    bottom.grid(alpha=0.3)
    if scored.empty:
        bottom.text(0.99, 0.92, "no prediction files read: only anomalous windows' scores", ha="right",
                    transform=bottom.transAxes, fontsize=8, color="#616161", va="top")
    _date_axis(bottom)
    handles, labels = top.get_legend_handles_labels()
    h2, l2 = bottom.get_legend_handles_labels()
    statuses = set(pair.alerts["status"]) if not pair.alerts.empty else set()
    spans = [(Patch(color=c, alpha=a), f"{st} alert") for st, c, a in
             (("open", "#ef5350", 0.35), ("closed", "#ffb74d", 0.45)) if st in statuses]
    fig.legend(handles + h2 + [h for h, _ in spans], labels + l2 + [lbl for _, lbl in spans],
               loc="outside upper left", ncols=8, fontsize=8, frameon=False)
    return _png(fig)


def plot_runs(runs: pd.DataFrame, selected: str | None = None) -> str:
    """Per run: duration (coloured by status), windows scored and anomalies, over the schedule slots."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = _dt(runs["slot"])
    slots = runs["slot"].to_numpy(dtype="int64")
    step_ms = float(np.median(np.diff(slots))) if len(slots) > 1 and np.any(np.diff(slots) > 0) else 3_600_000.0
    width = np.timedelta64(max(int(step_ms * 0.7), 1), "ms")
    colours = [STATUS_COLOURS.get(str(s), OTHER_STATUS_COLOUR) for s in runs["status"]]
    duration = runs["duration_s"].fillna(0.0).to_numpy(dtype=float)
    top.bar(x, duration, width=width, color=colours, edgecolor=["#000" if r == selected else c
                                                              for r, c in zip(runs["run_id"], colours, strict=True)])
    top.set_ylabel("run duration (s)\nclaimed → finished")
    top.grid(alpha=0.3, axis="y")
    bottom.bar(x, runs["windows"].fillna(0).to_numpy(dtype=float), width=width, color="#90caf9")
    bottom.set_ylabel("windows scored")
    twin = bottom.twinx()
    anomalies = runs["anomalies"].fillna(0).to_numpy(dtype=float)
    twin.plot(x, anomalies, color="#d32f2f", marker="o", ms=3, lw=1.2)
    twin.set_ylabel("anomalies", color="#d32f2f")
    twin.set_ylim(0, max(1.0, float(anomalies.max(initial=0.0)) * 1.15))
    seen = list(dict.fromkeys(str(s) for s in runs["status"]))
    handles = [Patch(color=STATUS_COLOURS.get(s, OTHER_STATUS_COLOUR)) for s in seen]
    handles += [Patch(color="#90caf9"), Line2D([], [], color="#d32f2f", marker="o", ms=3)]
    fig.legend(handles, [f"run {s}" for s in seen] + ["windows scored", "anomalies"], loc="outside upper left",
               ncols=len(handles), fontsize=8, frameon=False)
    bottom.set_xlabel("schedule slot (UTC)")
    bottom.grid(alpha=0.3, axis="y")
    _date_axis(bottom)
    return _png(fig)


def plot_stage_times(runs: pd.DataFrame) -> str | None:
    """Total seconds per stage over all runs (from runs.timings); None when no run recorded timings."""
    totals: dict[str, float] = {}
    for timings in runs["timings"]:
        for stage, seconds in (timings or {}).items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    if not totals:
        return None
    stages = sorted(totals, key=totals.get)
    return _labelled_bars(stages, [totals[st] for st in stages], label=lambda v: f" {v:.2f} s", color="#26a69a",
                          xlabel="seconds, summed over runs", title="Time per stage",
                          height=0.5 + 0.38 * len(stages) + 0.6, fontsize=8, margin=0.12)


def plot_dead_letters(dead: pd.DataFrame) -> str:
    """Dead letters by reason, most frequent on top."""
    dead = dead.sort_values("count")
    return _labelled_bars(list(dead["reason"]), dead["count"].to_numpy(dtype=float).tolist(),
                          label=lambda v: f" {int(v)}", color="#ff8a65", xlabel="dead letters",
                          title="Dead letters by reason", height=0.9 + 0.42 * len(dead), fontsize=9, margin=0.1)


def _labelled_bars(names: list[str], values: list[float], *, label, color: str, xlabel: str, title: str,
                   height: float, fontsize: int, margin: float) -> str:
    """Horizontal bars, bottom to top in the given order, each with its value written at its end."""
    fig = Figure(figsize=(12, height), layout="constrained")
    ax = fig.subplots()
    ax.barh([_mpl_text(n) for n in names], values, color=color)
    for i, v in enumerate(values):
        ax.text(v, i, label(v), va="center", fontsize=fontsize)
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left", fontsize=11)
    ax.margins(x=margin)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


# ------------------------------------------------------------------------------------------------ HTML

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1240px;
color:#212121;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e0e0e0}
.meta{color:#616161;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{border:1px solid #e0e0e0;border-radius:8px;padding:10px 16px;min-width:120px}
.card b{display:block;font-size:22px}.card span{color:#616161;font-size:12px}
.empty{padding:32px;border:2px dashed #bdbdbd;border-radius:8px;text-align:center;font-size:20px;color:#424242}
img{max-width:100%;display:block;margin:6px 0 14px}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{border-bottom:1px solid #eee;padding:4px 8px;
text-align:left}th{background:#fafafa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev-critical,.sev-high{color:#b71c1c;font-weight:600}.open{color:#c62828}.closed{color:#2e7d32}
.note{color:#616161;font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _card(value: Any, label: str) -> str:
    return f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _alerts_table(alerts: pd.DataFrame) -> str:
    head = ("alert", "device", "sensor", "status", "severity", "first window", "last window", "windows",
            "max score", "run")
    rows = []
    for _, a in alerts.iterrows():
        sev = str(a["severity"]).lower()
        rows.append(
            "<tr>"
            f"<td>{_e(a['alert_id'])}</td><td>{_e(a['device'])}</td><td>{_e(a['sensor'])}</td>"
            f'<td class="{_e(a["status"]) if a["status"] in ("open", "closed") else ""}">{_e(a["status"])}</td>'
            f'<td class="sev-{_e(sev) if sev in SEVERITY_RANK else "other"}">{_e(a["severity"])}</td>'
            f"<td>{_e(iso(a['first_window_end']))}</td><td>{_e(iso(a['last_window_end']))}</td>"
            f'<td class="num">{_e(a["windows"])}</td><td class="num">{float(a["max_score"]):.3f}</td>'
            f"<td>{_e(a['run_id'])}</td></tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _runs_table(runs: pd.DataFrame, limit: int = 15) -> str:
    head = ("run", "status", "backend", "model", "claimed", "duration (s)", "windows", "no model", "failures",
            "anomalies")
    rows = []
    for _, r in runs.iloc[::-1].head(limit).iterrows():
        dur = "" if pd.isna(r["duration_s"]) else f"{r['duration_s']:.1f}"
        num = [("" if pd.isna(r[c]) else int(r[c])) for c in ("windows", "windows_no_model", "failures", "anomalies")]
        rows.append(
            f"<tr><td>{_e(r['run_id'])}</td><td>{_e(r['status'])}</td><td>{_e(r['backend'])}</td>"
            f"<td>{_e(r['model_version'])}</td><td>{_e(iso(r['claimed_at']))}</td><td class='num'>{dur}</td>"
            + "".join(f"<td class='num'>{_e(v)}</td>" for v in num) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def render_report(data: ReportData) -> str:
    """The report as one self-contained HTML page."""
    s = data.summary
    title = "fleetscore report" + (f" — run {data.run_id}" if data.run_id else "")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<div class="meta">generated {_e(iso(data.generated_at_ms))} · times in UTC · scores from '
        f"{_e(data.scores_source)}</div>",
        '<div class="cards" id="summary">',
        _card(s["runs"], "runs"),
        _card(s["windows_scored"], "windows scored"),
        _card(s["anomalies"], "anomalies"),
        _card(s["open_alerts"], "open alerts"),
        _card(s["closed_alerts"], "closed alerts"),
        _card(s["dead_letters"], "dead letters"),
        _card(s["windows"], "windows stored"),
        "</div>",
    ]
    if s["runs_by_status"]:
        parts.append('<div class="meta">runs by status: '
                     + ", ".join(f"{_e(k)} {_e(v)}" for k, v in s["runs_by_status"].items()) + "</div>")
    if data.selected_run is not None:
        r = data.selected_run
        parts.append(
            f'<div class="meta">run {_e(r["run_id"])}: {_e(r.get("status"))}, slot {_e(iso(r.get("slot")))}, '
            f'windows ({_e(iso(r.get("window_from")))}, {_e(iso(r.get("window_until")))}], '
            f'{_e(r.get("windows"))} scored, {_e(r.get("anomalies"))} anomalies, '
            f'model {_e(r.get("model_version"))}</div>')
    parts.append("</header>")

    if s["runs"] == 0:
        parts.append('<div class="empty" id="no-runs">No runs yet — nothing has been scored. '
                     "Ingest readings and let the scoring schedule fire (or run <code>fleetscore demo</code>).</div>")
    else:
        parts.append('<section id="pairs"><h2>Alerted device · sensor pairs</h2>')
        if data.pairs:
            parts.append('<p class="note">Window mean (line) with its min–max band; score of each scored window '
                         "below it against the threshold 0 (above = anomalous); red points are anomalous windows; "
                         "shaded spans are alert episodes (red open, orange closed). Most severe first.</p>")
            for pair in data.pairs:
                parts.append(f"<h3>{_e(pair.device)} · {_e(pair.sensor)}</h3>")
                parts.append(_img(plot_pair(pair), f"series of {pair.device} {pair.sensor}"))
        else:
            parts.append('<p class="note">No alerts and no anomalies.</p>')
        parts.append("</section>")
        parts.append('<section id="runs"><h2>Runs</h2>')
        parts.append(_img(plot_runs(data.runs, data.run_id), "run durations and counts"))
        stages = plot_stage_times(data.runs)
        if stages is not None:
            parts.append(_img(stages, "time per stage"))
        parts.append(_runs_table(data.runs))
        parts.append("</section>")

    parts.append('<section id="dead-letters"><h2>Dead letters</h2>')
    if data.dead_letters.empty:
        parts.append('<p class="note">No dead letters.</p>')
    else:
        parts.append(_img(plot_dead_letters(data.dead_letters), "dead letters by reason"))
    parts.append("</section>")

    if s["runs"] or not data.alerts.empty:
        parts.append('<section id="alerts"><h2>Alerts</h2>')
        if data.alerts.empty:
            parts.append('<p class="note">No alerts.</p>')
        else:
            total = s["open_alerts"] + s["closed_alerts"]
            if total > len(data.alerts):
                parts.append(f'<p class="note">The {len(data.alerts)} most severe of {total}.</p>')
            parts.append(_alerts_table(data.alerts))
        parts.append("</section>")
    for note in data.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(engine: Engine, out: Path, store: BlobLister | None = None, run_id: str | None = None) -> Path:
    """Load, render and write the report to `out`; returns the path written."""
    out = Path(out)
    page = render_report(load_report_data(engine, store=store, run_id=run_id))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
