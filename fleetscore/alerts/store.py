"""Alerts: one per anomaly episode of a device+sensor, updated while it lasts, closed after it ends.

An *episode* is a run of consecutive anomalous windows of one pair. The pure function
:func:`update_alerts` walks a prediction file's scored windows (status ``ok``) pair by pair, only those
newer than the pair's latest alert's ``last_seen_window_end`` (so indexing a file again changes nothing):

- an anomalous window extends the pair's open alert (``last_window_end``, ``windows`` + 1, ``max_score``,
  ``severity``, ``model_version``, ``run_id``), or, with no open alert, opens a new one once the pair has
  ``ALERT_MIN_WINDOWS`` consecutive anomalous windows ending there (earlier files' windows are looked up in
  the ``anomalies`` table, so this works across files and runs); ``first_window_end`` is the first of them;
- a normal window — or a missing one: windows without a score count as normal — closes the open alert once
  its last anomalous window is ``ALERT_CLOSE_AFTER_WINDOWS`` windows behind. A later anomaly opens a new alert.
  When a run completes as succeeded, open alerts of pairs that had no window in it are closed the same way
  (:func:`close_stale`), so a sensor that stops reporting does not keep its alert open forever.

``alert_id`` is ``"al-"`` + 16 hex digits of SHA-256 over (device, sensor, first_window_end): a replayed
file can never raise a duplicate.

**Severity** compares ``max_score`` with the model's training-score quantiles from the model pack manifest
(``models/<version>/manifest.json``, read as JSON only, cached per version):

- ``critical``: score ≥ train max + 2 · (q99 − q50)
- ``high``:     score > train max
- ``medium``:   score > q99
- ``low``:      otherwise (anomalous, but within the training tail)

An unknown pack, pair or quantile gives ``medium``. Within an episode severity never goes down: each
anomalous window is rated under the model that scored it and the alert keeps the highest rating.

Every new or changed alert gets ``revision`` + 1 and is written to SQL ``alerts`` and as JSON to
``alerts/<yyyy>/<mm>/<dd>/<alert_id>.json`` (the UTC date of ``first_window_end``). The JSON (also the webhook
body) has ``alert_id, device, sensor, status ("open" | "closed"), first_window_end, last_window_end (ISO-8601
UTC, "Z"), windows, max_score, severity, model_version, run_id, raised_at, updated_at, revision``.
Bookkeeping alone (``last_seen_window_end``, ``normal_after``) is stored without a new revision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fleetscore import db
from fleetscore.storage.paths import alert_document_key, model_manifest_key
from scoring_job.pack import QUANTILES, manifest_training_table

log = logging.getLogger("fleetscore.alerts.store")

SEVERITIES = ("low", "medium", "high", "critical")
SEVERITY_RANK = {name: i for i, name in enumerate(SEVERITIES)}
UNKNOWN_SEVERITY = "medium"
DOCUMENT_FIELDS = ("alert_id", "device", "sensor", "status", "first_window_end", "last_window_end", "windows",
                   "max_score", "severity", "model_version", "run_id", "raised_at", "updated_at", "revision")
ALERT_COLUMNS = tuple(c.name for c in db.alerts.columns)

Quantiles = Mapping[str, float | None]
SeverityOf = Callable[[str | None, str, str, float], str]
"""severity_of(model_version, device, sensor, score) -> severity word."""


# ------------------------------------------------------------------------------------------ pure parts
def alert_id_for(device: str, sensor: str, first_window_end: int) -> str:
    """Deterministic id of the episode of (device, sensor) that starts at `first_window_end`."""
    digest = hashlib.sha256(f"{device}\x1f{sensor}\x1f{int(first_window_end)}".encode()).hexdigest()
    return "al-" + digest[:16]


def severity(score: float, quantiles: Quantiles | None) -> str:
    """Severity of an anomaly score against a model's training-score quantiles (see the module doc)."""
    if quantiles is None:
        return UNKNOWN_SEVERITY
    q50, q99, top = quantiles.get("q50"), quantiles.get("q99"), quantiles.get("max")
    if any(v is None or not math.isfinite(v) for v in (q50, q99, top)) or not math.isfinite(score):
        return UNKNOWN_SEVERITY
    if score >= top + 2.0 * max(q99 - q50, 0.0):
        return "critical"
    if score > top:
        return "high"
    if score > q99:
        return "medium"
    return "low"


def worse(a: str | None, b: str) -> str:
    """The more severe of two severity words."""
    if a is None:
        return b
    return a if SEVERITY_RANK.get(a, -1) >= SEVERITY_RANK.get(b, -1) else b


def quantiles_from_manifest(manifest: Any) -> dict[tuple[str, str], dict[str, float | None]]:
    """{(device, sensor): {"q50", "q90", "q95", "q99", "max"}} (None where unknown) from a model-pack manifest;
    PackError when it is malformed."""
    table = manifest_training_table(manifest)
    names = [name for name, _ in QUANTILES]
    values = table[[f"score_{name}" for name in names]].to_numpy()
    rows = [[None if math.isnan(v) else v for v in row] for row in values.tolist()]
    return {key: dict(zip(names, row, strict=True))
            for key, row in zip(zip(table["device"], table["sensor"], strict=True), rows, strict=True)}


def iso_ms(ms: int | None) -> str | None:
    """Epoch ms → ISO-8601 UTC with "Z" (milliseconds only when there are any)."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds" if int(ms) % 1000 else "seconds").replace("+00:00", "Z")


def alert_document(record: Mapping[str, Any]) -> dict[str, Any]:
    """The alert as JSON (blob and webhook body): DESIGN.md's alert fields plus `revision`."""
    doc = {name: record.get(name) for name in DOCUMENT_FIELDS}
    for name in ("first_window_end", "last_window_end", "raised_at", "updated_at"):
        doc[name] = iso_ms(doc[name])
    doc["windows"] = int(doc["windows"])
    doc["max_score"] = float(doc["max_score"])
    doc["revision"] = int(doc["revision"])
    return doc


def alert_blob_key(record: Mapping[str, Any]) -> str:
    """The alert's document key (:func:`fleetscore.storage.paths.alert_document_key`)."""
    return alert_document_key(record["alert_id"], record["first_window_end"])


@dataclass
class AlertUpdate:
    """What one file (or one run's completion) does to the alerts table."""

    new: list[dict[str, Any]] = field(default_factory=list)
    """Alerts to insert (revision 1)."""
    changed: list[dict[str, Any]] = field(default_factory=list)
    """Existing alerts with a visible change (revision already increased)."""
    bookkeeping: list[dict[str, Any]] = field(default_factory=list)
    """Existing alerts whose last_seen_window_end / normal_after moved, nothing else."""

    @property
    def visible(self) -> list[dict[str, Any]]:
        return self.new + self.changed


def _clean(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in record.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and math.isnan(v) and k in ("model_version", "run_id", "delivery_error"):
            v = None
        out[k] = v
    return out


def _close(alert: dict[str, Any], *, last_seen: int, normal_after: int, now: int) -> None:
    alert.update(status="closed", last_seen_window_end=int(last_seen), normal_after=int(normal_after), updated_at=now)


def update_alerts(windows: pd.DataFrame, latest: pd.DataFrame, history: pd.DataFrame, *, window_ms: int,
                  min_windows: int, close_after: int, severity_of: SeverityOf, now: int) -> AlertUpdate:
    """The alert changes one file's scored windows make (pure).

    - `windows`: the file's scored rows (status ok): device, sensor, window_end (int ms), score, is_anomaly,
      model_version, run_id.
    - `latest`: per pair at most one alert row (columns of the alerts table): its open alert, else its most
      recent closed one. Windows up to its `last_seen_window_end` are skipped.
    - `history`: earlier anomalous windows (device, sensor, window_end, score) from the anomalies table, for
      the ALERT_MIN_WINDOWS look-back (rows at or after a pair's first window in `windows` are ignored).
    """
    out = AlertUpdate()
    if windows.empty:
        return out
    state: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in latest.to_dict("records") if not latest.empty else []:
        key = (str(rec["device"]), str(rec["sensor"]))
        prev = state.get(key)
        if prev is None or rec["status"] == "open" or (
                prev["status"] != "open" and rec["last_seen_window_end"] > prev["last_seen_window_end"]):
            state[key] = _clean(rec)
    hot = windows.loc[windows["is_anomaly"].astype(bool), ["device", "sensor"]].drop_duplicates()
    candidates = set(zip(hot["device"], hot["sensor"], strict=True))
    candidates |= {k for k, rec in state.items() if rec["status"] == "open"}
    if not candidates:
        return out
    frame = windows[[(d, s) in candidates for d, s in zip(windows["device"], windows["sensor"], strict=True)]]
    frame = frame.sort_values(["device", "sensor", "window_end"], kind="stable")
    frame = frame.drop_duplicates(["device", "sensor", "window_end"], keep="last")
    hist_by_pair: dict[tuple[str, str], dict[int, float]] = {}
    if history is not None and not history.empty:
        for d, s, w, sc in zip(history["device"], history["sensor"], history["window_end"], history["score"],
                               strict=True):
            hist_by_pair.setdefault((str(d), str(s)), {})[int(w)] = float(sc)
    for (device, sensor), rows in frame.groupby(["device", "sensor"], sort=False):
        pair = (str(device), str(sensor))
        _update_pair(*pair, rows, state.get(pair), hist_by_pair.get(pair, {}), window_ms=window_ms,
                     min_windows=min_windows, close_after=close_after, severity_of=severity_of, now=now, out=out)
    return out


def _update_pair(device: str, sensor: str, rows: pd.DataFrame, state: dict[str, Any] | None,
                 history: dict[int, float], *, window_ms: int, min_windows: int, close_after: int,
                 severity_of: SeverityOf, now: int, out: AlertUpdate) -> None:
    W = window_ms
    seen = int(state["last_seen_window_end"]) if state is not None else None
    first_here = int(rows["window_end"].iloc[0])
    anomalous = {w: s for w, s in history.items() if w < first_here and (seen is None or w > seen)}
    existing = dict(state) if state is not None and state["status"] == "open" else None
    current = existing  # the open alert being worked on (existing or created here)
    created: list[dict[str, Any]] = []
    visible = False  # the existing alert changed visibly
    touched = False  # the existing alert's bookkeeping moved
    arrays = zip(rows["window_end"].to_numpy(dtype=np.int64), rows["score"].to_numpy(dtype=np.float64),
                 rows["is_anomaly"].to_numpy(dtype=bool), rows["model_version"], rows["run_id"], strict=True)
    for w, score, is_anom, model_version, run_id in arrays:
        w = int(w)
        if seen is not None and w <= seen:
            continue
        is_anom = bool(is_anom) and math.isfinite(score)
        model_version = None if model_version is None or pd.isna(model_version) else str(model_version)
        run_id = None if run_id is None or pd.isna(run_id) else str(run_id)
        if is_anom:
            anomalous[w] = float(score)
        if current is not None:
            gap = (w - int(current["last_window_end"])) // W - 1  # windows in between: normal or missing
            if is_anom and gap < close_after:
                current.update(last_window_end=w, last_seen_window_end=w, windows=int(current["windows"]) + 1,
                               max_score=max(float(current["max_score"]), float(score)), model_version=model_version,
                               run_id=run_id, normal_after=0, updated_at=now,
                               severity=worse(current["severity"], severity_of(model_version, device, sensor, score)))
                visible = visible or current is existing
                continue
            normals = gap if is_anom else gap + 1
            if normals >= close_after:
                _close(current, last_seen=w - W if is_anom else w, normal_after=normals, now=now)
                visible = visible or current is existing
                current = None
            else:  # still open: bookkeeping only
                current.update(last_seen_window_end=w, normal_after=normals)
                touched = touched or current is existing
                continue
        if not is_anom:
            continue
        start, count = w, 1
        while (start - W) in anomalous and (seen is None or start - W > seen):
            start -= W
            count += 1
        if count < min_windows:
            continue
        current = {
            "alert_id": alert_id_for(device, sensor, start), "device": device, "sensor": sensor, "status": "open",
            "first_window_end": start, "last_window_end": w, "last_seen_window_end": w, "normal_after": 0,
            "windows": count, "max_score": max(anomalous[start + i * W] for i in range(count)),
            "severity": severity_of(model_version, device, sensor,
                                    max(anomalous[start + i * W] for i in range(count))),
            "model_version": model_version, "run_id": run_id, "raised_at": now, "updated_at": now,
            "revision": 1, "delivered_revision": 0, "delivery_attempts": 0, "delivery_error": None,
        }
        created.append(current)
    if existing is not None:
        if visible:
            existing["revision"] = int(existing["revision"]) + 1
            existing["updated_at"] = now
            out.changed.append(existing)
        elif touched:
            out.bookkeeping.append(existing)
    out.new.extend(created)


def close_stale(open_alerts: Iterable[Mapping[str, Any]], *, until: int, window_ms: int, close_after: int,
                now: int) -> list[dict[str, Any]]:
    """Open alerts whose pair had no scored window up to `until` (the end of a completed run's range) for
    `close_after` windows after their last anomaly: closed (the missing windows count as normal)."""
    closed = []
    for rec in open_alerts:
        rec = _clean(rec)
        if rec["status"] != "open" or int(rec["last_seen_window_end"]) >= until:
            continue
        normals = (until - int(rec["last_window_end"])) // window_ms
        if normals >= close_after:
            _close(rec, last_seen=until, normal_after=normals, now=now)
            rec["revision"] = int(rec["revision"]) + 1
            closed.append(rec)
    return closed


# -------------------------------------------------------------------------------------- severity lookup
_MANIFESTS: OrderedDict[tuple[str, str], dict[tuple[str, str], dict[str, float | None]]] = OrderedDict()
_MANIFESTS_LOCK = threading.Lock()
_MANIFESTS_MAX = 8


def pack_quantiles(store: Any, version: str) -> dict[tuple[str, str], dict[str, float | None]] | None:
    """The training-score quantiles of pack `version` (manifest JSON only; cached per store and version;
    None when the manifest cannot be read — not cached, so a later file tries again)."""
    cache_key = (repr(store), version)
    with _MANIFESTS_LOCK:
        if cache_key in _MANIFESTS:
            _MANIFESTS.move_to_end(cache_key)
            return _MANIFESTS[cache_key]
    try:
        manifest = json.loads(store.get(model_manifest_key(version)))
        table = quantiles_from_manifest(manifest)
    except Exception as exc:  # missing or unreadable pack: severity falls back to "medium"
        log.warning("model pack %s: no readable manifest (%s); severity of its alerts is %s",
                    version, type(exc).__name__, UNKNOWN_SEVERITY)
        return None
    with _MANIFESTS_LOCK:
        _MANIFESTS[cache_key] = table
        while len(_MANIFESTS) > _MANIFESTS_MAX:
            _MANIFESTS.popitem(last=False)
    return table


def severity_lookup(store: Any, versions: Iterable[str | None]) -> SeverityOf:
    """A `severity_of` over the packs of `versions` (manifests are read now, before any transaction)."""
    tables = {v: pack_quantiles(store, v) for v in {str(v) for v in versions if v is not None and not pd.isna(v)}}

    def severity_of(model_version: str | None, device: str, sensor: str, score: float) -> str:
        table = tables.get(model_version) if model_version is not None else None
        return severity(score, table.get((device, sensor)) if table is not None else None)

    return severity_of


# ------------------------------------------------------------------------------------------- SQL layer
def load_latest(conn: Connection, pairs: pd.DataFrame, since: int) -> pd.DataFrame:
    """Per pair of `pairs` (device, sensor) its open alert, or its closed alerts last seen at or after `since`
    (locked for update where the dialect supports it)."""
    a = db.alerts
    devices = sorted(set(pairs["device"].astype(str)))
    rows = []
    for chunk in db.chunks(devices):
        q = (sa.select(a).where(a.c.device.in_(chunk), sa.or_(a.c.status == "open", a.c.last_seen_window_end >= since))
             .order_by(a.c.alert_id).with_for_update())
        rows.extend(conn.execute(q).mappings().all())
    frame = pd.DataFrame([dict(r) for r in rows], columns=list(ALERT_COLUMNS))
    if frame.empty:
        return frame
    wanted = set(zip(pairs["device"].astype(str), pairs["sensor"].astype(str), strict=True))
    keep = [(d, s) in wanted for d, s in zip(frame["device"], frame["sensor"], strict=True)]
    return frame[keep].reset_index(drop=True)


def load_history(conn: Connection, pairs: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    """Anomalous windows of `pairs` with lo <= window_end < hi."""
    an = db.anomalies
    devices = sorted(set(pairs["device"].astype(str)))
    rows = []
    for chunk in db.chunks(devices):
        q = sa.select(an.c.device, an.c.sensor, an.c.window_end, an.c.score).where(
            an.c.device.in_(chunk), an.c.window_end >= lo, an.c.window_end < hi)
        rows.extend(conn.execute(q).all())
    frame = pd.DataFrame(rows, columns=["device", "sensor", "window_end", "score"])
    if frame.empty:
        return frame
    wanted = set(zip(pairs["device"].astype(str), pairs["sensor"].astype(str), strict=True))
    keep = [(d, s) in wanted for d, s in zip(frame["device"], frame["sensor"], strict=True)]
    return frame[keep].reset_index(drop=True)


def save(conn: Connection, update: AlertUpdate) -> None:
    """Insert the new alerts and write the changed ones (one executemany each)."""
    a = db.alerts
    if update.new:
        ids = [r["alert_id"] for r in update.new]
        taken: set[str] = set()
        for chunk in db.chunks(ids):
            taken |= set(conn.execute(sa.select(a.c.alert_id).where(a.c.alert_id.in_(chunk))).scalars())
        fresh = [{c: r.get(c) for c in ALERT_COLUMNS} for r in update.new if r["alert_id"] not in taken]
        if taken:
            log.info("alerts %s exist already (replayed episode start); left as they are", sorted(taken))
        if fresh:
            conn.execute(a.insert(), fresh)
    changed_cols = ("status", "last_window_end", "last_seen_window_end", "normal_after", "windows", "max_score",
                    "severity", "model_version", "run_id", "updated_at", "revision")
    if update.changed:
        stmt = a.update().where(a.c.alert_id == sa.bindparam("b_alert_id")).values(
            {c: sa.bindparam(f"b_{c}") for c in changed_cols})
        conn.execute(stmt, [{f"b_{c}": r[c] for c in ("alert_id", *changed_cols)} for r in update.changed])
    if update.bookkeeping:
        stmt = a.update().where(a.c.alert_id == sa.bindparam("b_alert_id")).values(
            last_seen_window_end=sa.bindparam("b_last_seen"), normal_after=sa.bindparam("b_normal_after"))
        conn.execute(stmt, [{"b_alert_id": r["alert_id"], "b_last_seen": r["last_seen_window_end"],
                             "b_normal_after": r["normal_after"]} for r in update.bookkeeping])


def apply_file(conn: Connection, scored: pd.DataFrame, *, window_ms: int, min_windows: int, close_after: int,
               severity_of: SeverityOf, now: int) -> AlertUpdate:
    """Alerts for one file's scored windows, inside the caller's transaction (after its anomalies are stored)."""
    if scored.empty:
        return AlertUpdate()
    pairs = scored[["device", "sensor"]].drop_duplicates()
    lo = int(scored["window_end"].min())
    latest = load_latest(conn, pairs, since=lo - min_windows * window_ms)
    history = pd.DataFrame(columns=["device", "sensor", "window_end", "score"])
    if min_windows > 1:
        history = load_history(conn, pairs, lo - (min_windows - 1) * window_ms, int(scored["window_end"].max()) + 1)
    update = update_alerts(scored, latest, history, window_ms=window_ms, min_windows=min_windows,
                           close_after=close_after, severity_of=severity_of, now=now)
    save(conn, update)
    return update


def apply_stale(conn: Connection, *, until: int, window_ms: int, close_after: int, now: int) -> AlertUpdate:
    """Close the open alerts a completed run (range end `until`) saw no window of (see `close_stale`)."""
    a = db.alerts
    rows = conn.execute(sa.select(a).where(a.c.status == "open", a.c.last_seen_window_end < until,
                                           a.c.last_window_end <= until - close_after * window_ms)
                        .order_by(a.c.alert_id).with_for_update()).mappings().all()
    update = AlertUpdate(changed=close_stale(rows, until=until, window_ms=window_ms, close_after=close_after, now=now))
    save(conn, update)
    return update


def write_blobs(store: Any, records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Write each alert's JSON document; returns the ids whose write failed (logged, not raised: the alert
    is safe in SQL and `fleetscore alerts redeliver --blobs` writes it again)."""
    failed = []
    for rec in records:
        try:
            store.put(alert_blob_key(rec), json.dumps(alert_document(rec), indent=1).encode())
        except Exception:
            log.exception("could not write the JSON of alert %s", rec["alert_id"])
            failed.append(rec["alert_id"])
    return failed


def list_alerts(engine: Engine, *, open_only: bool = False, limit: int | None = 200) -> list[dict[str, Any]]:
    """Alerts, newest change first, as rows of the alerts table."""
    a = db.alerts
    q = sa.select(a).order_by(a.c.updated_at.desc(), a.c.alert_id)
    if open_only:
        q = q.where(a.c.status == "open")
    if limit is not None:
        q = q.limit(limit)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings().all()]
