"""What the report shows, read from SQL and (given a blob store) the prediction files, as plain DataFrames.

`load_report_data(engine, store, run_id)` gathers the summary numbers, the runs, the alerts (most severe
first), dead letters by reason, and for each alerted pair its window series with scores, anomalies and
alert spans. All times are int epoch ms UTC.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import clock, db
from fleetscore.alerts.severity import SEVERITY_RANK
from fleetscore.storage.paths import PREDICTIONS, is_prediction_file, predictions_prefix
from scoring_job.contract import PREDICTION_COLUMNS

log = logging.getLogger(__name__)

MAX_ALERT_ROWS = 200
MAX_RUNS = 1000
MAX_POINTS_PER_PAIR = 5000
DEFAULT_WINDOW_MS = 5 * 60_000
UNKNOWN_SEVERITY_RANK = -1
"""Where a severity word the alerts package does not know sorts: below `low`; ties break on max_score."""

SCORE_KEY_COLUMNS = tuple(c for c in PREDICTION_COLUMNS if c in ("device", "sensor", "window_end", "score"))
"""The prediction-file columns without which a file cannot be plotted."""
SCORE_COLUMNS = SCORE_KEY_COLUMNS + tuple(c for c in PREDICTION_COLUMNS if c in ("threshold", "is_anomaly", "run_id"))
"""The prediction-file columns the plots read; `is_anomaly` (else score > 0) and `run_id` may be absent."""

Span = tuple[int, int]
"""A window_end range (lo, hi], epoch ms."""


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


def load_report_data(engine: Engine, store: BlobLister | None = None, run_id: str | None = None,
                     max_pairs: int = 12) -> ReportData:
    """Everything the report shows, as DataFrames; `run_id` focuses pairs, alerts and scores on one run."""
    notes: list[str] = []
    with engine.connect() as conn:
        runs = _load_runs(conn)
        summary, dead = _load_summary(conn)
        selected = _load_selected_run(conn, run_id)
        alerts = _load_alerts(conn, selected)
        pairs = _choose_pairs(alerts, _most_anomalous_pairs(conn, run_id, max_pairs), max_pairs)
        span = _pair_range(runs, selected, alerts)
        series = [_load_pair_series(conn, device, sensor, span) for device, sensor in pairs]
    if selected is not None:
        match = runs[runs["run_id"] == run_id]
        selected["anomalies"] = int(match["anomalies"].iloc[0]) if not match.empty else 0
    scores, scores_source = _scores_of_pairs(store, runs, run_id, pairs, span, notes)
    pair_data = [_pair_data(device, sensor, windows, anomalies, scores, alerts, span)
                 for (device, sensor), (windows, anomalies) in zip(pairs, series, strict=True)]
    return ReportData(generated_at_ms=clock.now_ms(), run_id=run_id, summary=summary, runs=runs,
                      alerts=alerts.head(MAX_ALERT_ROWS), dead_letters=dead, pairs=pair_data,
                      scores_source=scores_source, notes=notes, selected_run=selected)


# ------------------------------------------------------------------------------------------------- SQL


def _frame(conn: sa.Connection, query: sa.Select) -> pd.DataFrame:
    result = conn.execute(query)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _count(conn: sa.Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _counts_by(conn: sa.Connection, column: sa.Column) -> dict[Any, int]:
    return {k: int(v) for k, v in conn.execute(sa.select(column, sa.func.count()).group_by(column)).all()}


def _load_summary(conn: sa.Connection) -> tuple[dict[str, Any], pd.DataFrame]:
    """The header's numbers, and dead letters by reason (reason, count; most frequent first)."""
    dl = db.dead_letters.c
    dead = _frame(conn, sa.select(dl.reason, sa.func.count().label("count"))
                  .group_by(dl.reason).order_by(sa.func.count().desc(), dl.reason))
    by_status = _counts_by(conn, db.runs.c.status)
    alert_counts = _counts_by(conn, db.alerts.c.status)
    windows_scored = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(db.runs.c.windows), 0))).scalar_one()
    summary = {
        "runs": _count(conn, db.runs),
        "runs_by_status": {str(k): v for k, v in sorted(by_status.items(), key=lambda kv: str(kv[0]))},
        "windows": _count(conn, db.windows),
        "windows_scored": int(windows_scored or 0),
        "anomalies": _count(conn, db.anomalies),
        "open_alerts": alert_counts.get("open", 0),
        "closed_alerts": alert_counts.get("closed", 0),
        "dead_letters": int(dead["count"].sum()) if not dead.empty else 0,
    }
    return summary, dead


def _load_runs(conn: sa.Connection) -> pd.DataFrame:
    """The latest MAX_RUNS runs, oldest first, with duration_s, parsed timings and anomalies per run."""
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
    runs["anomalies"] = _anomalies_per_run(conn, runs["run_id"])
    for col in ("windows", "windows_no_model", "failures", "partitions", "models"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    return runs


def _anomalies_per_run(conn: sa.Connection, run_ids: pd.Series) -> list[float]:
    """What the run's indexed prediction files counted, else what the anomalies table holds for it."""
    pf, a = db.prediction_files.c, db.anomalies.c
    per_file = dict(conn.execute(sa.select(pf.run_id, sa.func.sum(pf.anomalies))
                                 .where(pf.run_id.is_not(None)).group_by(pf.run_id)).all())
    per_table = dict(conn.execute(sa.select(a.run_id, sa.func.count())
                                  .where(a.run_id.is_not(None)).group_by(a.run_id)).all())
    return [float(per_file[rid]) if per_file.get(rid) is not None else float(per_table.get(rid, 0))
            for rid in run_ids]


def _parse_timings(text: Any) -> dict[str, float]:
    """runs.timings JSON → {stage: seconds}, finite numbers only ({} when absent or malformed)."""
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {str(k): float(v) for k, v in parsed.items() if isinstance(v, (int, float)) and np.isfinite(v)}


def _load_selected_run(conn: sa.Connection, run_id: str | None) -> dict[str, Any] | None:
    """The runs row of `run_id` (None when no run is selected); ValueError when there is no such run."""
    if run_id is None:
        return None
    row = conn.execute(sa.select(db.runs).where(db.runs.c.run_id == run_id)).mappings().first()
    if row is None:
        raise ValueError(f"no run {run_id!r} in the database")
    return dict(row)


def _load_alerts(conn: sa.Connection, selected: dict[str, Any] | None) -> pd.DataFrame:
    """Alerts, most severe first: all of them, or the selected run's and those overlapping its windows."""
    al = db.alerts.c
    query = sa.select(al.alert_id, al.device, al.sensor, al.status, al.severity, al.opened_by, al.first_window_end,
                      al.last_window_end, al.windows, al.max_score, al.model_version, al.run_id,
                      al.raised_at, al.updated_at)
    if selected is not None:
        scope = al.run_id == selected["run_id"]
        lo, hi = selected.get("window_from"), selected.get("window_until")
        if lo is not None and hi is not None:  # alerts whose episode overlaps the run's windows
            scope = sa.or_(scope, sa.and_(al.last_window_end > lo, al.first_window_end <= hi))
        query = query.where(scope)
    rank = sa.case(SEVERITY_RANK, value=sa.func.lower(al.severity), else_=UNKNOWN_SEVERITY_RANK)
    return _severity_order(_frame(conn, query.order_by(rank.desc(), al.max_score.desc()).limit(5 * MAX_ALERT_ROWS)))


def _severity_order(alerts: pd.DataFrame) -> pd.DataFrame:
    """Most severe first, then highest max_score, open before closed, latest first."""
    if alerts.empty:
        return alerts
    ranked = alerts.assign(
        _rank=alerts["severity"].astype(str).str.lower().map(SEVERITY_RANK).fillna(UNKNOWN_SEVERITY_RANK),
        _open=(alerts["status"] == "open").astype(int),
    )
    ranked = ranked.sort_values(["_rank", "max_score", "_open", "last_window_end"],
                                ascending=[False, False, False, False], kind="stable")
    return ranked.drop(columns=["_rank", "_open"]).reset_index(drop=True)


def _most_anomalous_pairs(conn: sa.Connection, run_id: str | None, limit: int) -> pd.DataFrame:
    """device, sensor of the pairs with the most anomalous windows (of one run, or of all), most first."""
    a = db.anomalies.c
    query = sa.select(a.device, a.sensor, sa.func.count().label("n"), sa.func.max(a.score).label("s"))
    if run_id is not None:
        query = query.where(a.run_id == run_id)
    return _frame(conn, query.group_by(a.device, a.sensor)
                  .order_by(sa.func.count().desc(), sa.func.max(a.score).desc()).limit(limit))


def _choose_pairs(alerts: pd.DataFrame, anomalous: pd.DataFrame, max_pairs: int) -> list[tuple[str, str]]:
    """The alerted pairs in alert order; with no alert, the most anomalous pairs."""
    pairs: list[tuple[str, str]] = []
    for device, sensor in zip(alerts.get("device", []), alerts.get("sensor", []), strict=False):
        if (device, sensor) not in pairs:
            pairs.append((device, sensor))
    if not pairs:
        pairs = list(zip(anomalous["device"], anomalous["sensor"], strict=False))
    return pairs[:max_pairs]


def _pair_range(runs: pd.DataFrame, selected: dict | None, alerts: pd.DataFrame) -> Span | None:
    """The window_end range to plot: the scored range (of one run, or of all) with context before it."""
    scope = runs if selected is None else runs[runs["run_id"] == selected["run_id"]]
    lo = pd.to_numeric(scope.get("window_from"), errors="coerce").min() if not scope.empty else np.nan
    hi = pd.to_numeric(scope.get("window_until"), errors="coerce").max() if not scope.empty else np.nan
    if not alerts.empty:
        lo = np.nanmin([lo, alerts["first_window_end"].min()])
        hi = np.nanmax([hi, alerts["last_window_end"].max()])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    length = max(int(hi - lo), 1)
    return int(lo - length // 2), int(hi)


def _load_pair_series(conn: sa.Connection, device: str, sensor: str,
                      span: Span | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pair's windows (window_end, n, sum, min, max; newest MAX_POINTS_PER_PAIR, newest first) and its
    anomalies (window_end, score, run_id; oldest first) within `span`."""
    w, a = db.windows.c, db.anomalies.c
    in_windows = sa.and_(w.device == device, w.sensor == sensor)
    in_anomalies = sa.and_(a.device == device, a.sensor == sensor)
    if span is not None:
        lo, hi = span
        in_windows = sa.and_(in_windows, w.window_end > lo, w.window_end <= hi)
        in_anomalies = sa.and_(in_anomalies, a.window_end > lo, a.window_end <= hi)
    windows = _frame(conn, sa.select(w.window_end, w.n, w.sum, w.min, w.max).where(in_windows)
                     .order_by(w.window_end.desc()).limit(MAX_POINTS_PER_PAIR))
    anomalies = _frame(conn, sa.select(a.window_end, a.score, a.run_id).where(in_anomalies).order_by(a.window_end))
    return windows, anomalies


# ------------------------------------------------------------------------------------ prediction files


def _empty_scores() -> pd.DataFrame:
    return pd.DataFrame({"device": pd.Series(dtype=object), "sensor": pd.Series(dtype=object),
                         "window_end": pd.Series(dtype="int64"), "score": pd.Series(dtype=float),
                         "threshold": pd.Series(dtype=float), "is_anomaly": pd.Series(dtype=bool),
                         "run_id": pd.Series(dtype=object)})


def _scores_of_pairs(store: BlobLister | None, runs: pd.DataFrame, run_id: str | None,
                     pairs: list[tuple[str, str]], span: Span | None,
                     notes: list[str]) -> tuple[pd.DataFrame | None, str]:
    """The pairs' scores from the prediction files that can hold them (None when none are read), and where
    the plotted scores come from, in words."""
    if store is None:
        return None, "the anomalies table only (no blob store)"
    if not pairs:
        return None, "prediction files (none needed: no alerted pair)"
    run_ids = [run_id] if run_id is not None else _runs_in(runs, span)
    scores, files = _load_scores(store, run_ids, pairs, notes)
    return scores, f"{files} prediction file(s)"


def _runs_in(runs: pd.DataFrame, span: Span | None) -> list[str] | None:
    """Ids of the runs whose window range overlaps `span`: only their prediction files hold scores the
    plots show (None — every file — when the range is unknown)."""
    if runs.empty or span is None:
        return None
    lo, hi = span
    start = pd.to_numeric(runs["window_from"], errors="coerce")
    end = pd.to_numeric(runs["window_until"], errors="coerce")
    return sorted(runs.loc[(end > lo) & (start < hi), "run_id"].astype(str))


def load_scored_windows(store: BlobLister, run_ids: list[str] | None, extra: tuple[str, ...] = (),
                        notes: list[str] | None = None, *, pairs: list[tuple[str, str]] | None = None
                        ) -> tuple[pd.DataFrame, int]:
    """The scored windows of `pairs` (None: every pair) from the prediction files of `run_ids` (None: all):
    SCORE_COLUMNS plus the `extra` prediction-file columns that a file has (window_end as int epoch ms); (frame, files
    read). Unreadable files are skipped with a note in `notes`."""
    if pairs is not None and not pairs:
        return _empty_scores(), 0
    return _load_scores(store, run_ids, pairs or [], [] if notes is None else notes, extra)


def scored_files(store: BlobLister, run_ids: list[str] | None, extra: tuple[str, ...] = (),
                 notes: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The prediction files of `run_ids` (None: all), one frame a file: SCORE_COLUMNS plus the `extra` columns the
    file has, window_end as int epoch ms. Unreadable files are skipped with a note in `notes`."""
    notes = [] if notes is None else notes
    prefixes = [f"{PREDICTIONS}/"] if run_ids is None else [f"{predictions_prefix(rid)}/" for rid in run_ids]
    for name in (name for prefix in prefixes for name in _prediction_file_names(store, prefix, notes)):
        frame = _read_scores_file(store, name, notes, extra)
        if frame is not None:
            yield frame.assign(window_end=_window_end_ms(frame["window_end"]))


def _load_scores(store: BlobLister, run_ids: list[str] | None, pairs: list[tuple[str, str]],
                 notes: list[str], extra: tuple[str, ...] = ()) -> tuple[pd.DataFrame, int]:
    """Scores of the chosen pairs (all when none is chosen) from the prediction files of `run_ids` (None: all),
    with the `extra` columns a file has; (frame, files read).

    A window scored again (a re-run) keeps the score of the file read last."""
    wanted = pd.MultiIndex.from_tuples(pairs, names=["device", "sensor"]) if pairs else None
    frames = []
    files = 0
    for files, frame in enumerate(scored_files(store, run_ids, extra, notes), start=1):
        if wanted is not None:
            frame = frame[pd.MultiIndex.from_frame(frame[["device", "sensor"]]).isin(wanted)]
        if not frame.empty:
            frames.append(frame.assign(_order=files))
    if not frames:
        return _empty_scores(), files
    return _newest_scores(pd.concat(frames, ignore_index=True)), files


def _prediction_file_names(store: BlobLister, prefix: str, notes: list[str]) -> list[str]:
    """The prediction files under `prefix` (`.parquet`, no writer's temp file), sorted; none (and a note)
    when the store cannot list them."""
    try:
        return sorted(b.name for b in store.list(prefix) if is_prediction_file(b.name))
    except Exception as exc:  # a missing container or an unreachable store: plot without scores
        notes.append(f"could not list {prefix}: {type(exc).__name__}")
        log.warning("report: could not list %s: %s", prefix, exc)
        return []


def _read_scores_file(store: BlobLister, name: str, notes: list[str],
                      extra: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """The SCORE_COLUMNS (and `extra` columns) a prediction file has; None (and a note) when it cannot be read or
    lacks a key column."""
    try:
        source = pq.ParquetFile(io.BytesIO(store.get(name)))
        cols = [c for c in dict.fromkeys(SCORE_COLUMNS + tuple(extra)) if c in source.schema_arrow.names]
        if not set(SCORE_KEY_COLUMNS) <= set(cols):
            raise ValueError(f"not a prediction file (columns {source.schema_arrow.names})")
        return source.read(columns=cols).to_pandas()
    except Exception as exc:
        notes.append(f"could not read {name}: {type(exc).__name__}")
        log.warning("report: could not read %s: %s", name, exc)
        return None


def _newest_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Fill the optional columns and keep, per window, the row of the file read last (`_order`)."""
    if "threshold" not in scores:  # a file written before calibrated thresholds: the old rule, score > 0
        scores["threshold"] = 0.0
    if "is_anomaly" not in scores:
        scores["is_anomaly"] = scores["score"] > scores["threshold"]
    if "run_id" not in scores:
        scores["run_id"] = None
    scores["score"] = pd.to_numeric(scores["score"], errors="coerce")
    scores = scores.sort_values("_order", kind="stable").drop_duplicates(["device", "sensor", "window_end"],
                                                                        keep="last")
    return scores.drop(columns="_order").reset_index(drop=True)


def _window_end_ms(series: pd.Series) -> pd.Series:
    """A window_end column (timestamp of any unit/zone, or integers) as epoch ms int64."""
    if pd.api.types.is_datetime64_any_dtype(series):
        if series.dt.tz is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.astype("datetime64[ms]").astype("int64")
    return pd.to_numeric(series, errors="coerce").astype("int64")


# ----------------------------------------------------------------------------------------- one pair


def _pair_data(device: str, sensor: str, windows: pd.DataFrame, anomalies: pd.DataFrame,
               scores: pd.DataFrame | None, alerts: pd.DataFrame, span: Span | None) -> PairData:
    """One pair's plot data from its SQL rows, the loaded scores and the alerts."""
    series = _window_series(windows)
    pair_alerts = alerts[(alerts["device"] == device) & (alerts["sensor"] == sensor)] if not alerts.empty else alerts
    return PairData(device=device, sensor=sensor, window_ms=_infer_window_ms(series["window_end"].to_numpy()),
                    windows=series, scores=_pair_scores(scores, device, sensor, span), anomalies=anomalies,
                    alerts=pair_alerts.reset_index(drop=True))


def _window_series(windows: pd.DataFrame) -> pd.DataFrame:
    """windows rows (newest first; n, sum, min, max) → window_end, n, mean, min, max, oldest first."""
    windows = windows.iloc[::-1].reset_index(drop=True)
    n = pd.to_numeric(windows["n"], errors="coerce")
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, pd.to_numeric(windows["sum"], errors="coerce") / n, np.nan)
    return pd.DataFrame({"window_end": windows["window_end"].astype("int64"), "n": n, "mean": mean,
                         "min": pd.to_numeric(windows["min"]), "max": pd.to_numeric(windows["max"])})


def _pair_scores(scores: pd.DataFrame | None, device: str, sensor: str, span: Span | None) -> pd.DataFrame:
    """The pair's scored windows within `span`: window_end, score, is_anomaly, run_id, oldest first."""
    columns = ["window_end", "score", "is_anomaly", "run_id"]
    if scores is None or scores.empty:
        return _empty_scores()[columns]
    mine = scores[(scores["device"] == device) & (scores["sensor"] == sensor)]
    if span is not None:
        mine = mine[(mine["window_end"] > span[0]) & (mine["window_end"] <= span[1])]
    return mine[columns].sort_values("window_end").reset_index(drop=True)


def _infer_window_ms(ends: np.ndarray) -> int:
    """The window length: the smallest positive gap between window ends (DEFAULT_WINDOW_MS with < 2)."""
    if len(ends) < 2:
        return DEFAULT_WINDOW_MS
    diffs = np.diff(np.sort(ends))
    diffs = diffs[diffs > 0]
    return int(np.min(diffs)) if len(diffs) else DEFAULT_WINDOW_MS
