"""Prediction files (`predictions/<run_id>/part-NNNNN.parquet`): reading and validating one, and what it counts.

The file's schema and window statuses are :mod:`scoring_job.contract`'s (`PREDICTION_SCHEMA`,
`WINDOW_STATUSES`); a reader needs `PREDICTION_REQUIRED_COLUMNS`. Everything here is pure.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetscore import db
from scoring_job.contract import PREDICTION_REQUIRED_COLUMNS, PREDICTION_SCHEMA, WINDOW_STATUSES

MAX_FAILURE_DETAIL = 50
"""Entries of {"device/sensor": reason} kept per file and per run."""
TEXT_COLUMNS = tuple(f.name for f in PREDICTION_SCHEMA if pa.types.is_string(f.type))
"""device, sensor, model_version, run_id, status, error: str (or None) once read."""
NULLABLE_TEXT = ("model_version", "run_id", "error")
LENGTHS = {name: db.anomalies.c[name].type.length for name in ("device", "sensor", "model_version", "run_id")}
"""Longest value the database stores of each id column (characters)."""


class PredictionFileError(ValueError):
    """The bytes are not a prediction file (not Parquet, truncated, wrong columns or values)."""


def normalize_etag(etag: str) -> str:
    """ETags quoted as the blob store shows them (the trigger's blob properties may give them bare)."""
    etag = str(etag).strip()
    return etag if etag.startswith(('"', "W/")) else f'"{etag}"'


def content_etag(data: bytes) -> str:
    """A stand-in ETag from the content, for callers that hand over bytes without one."""
    return '"sha256-' + hashlib.sha256(data).hexdigest()[:32] + '"'


# ------------------------------------------------------------------------------------------ reading
def read_predictions(data: bytes) -> pd.DataFrame:
    """Parse a prediction file into one row per window: window_end int64 epoch ms, score, threshold and
    threshold_strong float64 (a file written before the thresholds: 0.0, the old ``score > 0`` rule, and NaN),
    is_anomaly bool (null: False), the :data:`TEXT_COLUMNS` as str or None. Raises PredictionFileError."""
    columns = _columns(data)
    try:
        score = _floats(columns["score"])
        frame = pd.DataFrame({"window_end": _window_end_ms(columns["window_end"]), "score": score,
                              "threshold": _floats(columns["threshold"]) if "threshold" in columns
                              else np.zeros(len(score)),
                              "threshold_strong": _floats(columns["threshold_strong"])
                              if "threshold_strong" in columns else np.full(len(score), np.nan),
                              "is_anomaly": _flags(columns["is_anomaly"])})
    except PredictionFileError:
        raise
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise PredictionFileError(f"bad column values: {type(exc).__name__}: {exc}") from None
    for name in TEXT_COLUMNS:
        column = columns.get(name)
        if column is not None and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            frame[name] = _arrow_strings(column, name, nullable=name in NULLABLE_TEXT)
            continue
        values = column.to_pandas() if column is not None else pd.Series([None] * len(frame), dtype=object)
        frame[name] = _strings(values.reset_index(drop=True), name, nullable=name in NULLABLE_TEXT).to_numpy()
    bad = sorted(set(frame["status"]) - set(WINDOW_STATUSES))
    if bad:
        raise PredictionFileError(f"column 'status' has unknown values {bad[:5]} (want {list(WINDOW_STATUSES)})")
    return frame


def _columns(data: bytes) -> dict[str, pa.ChunkedArray]:
    """The file's columns by name, dictionary-encoded ones decoded; the required ones must be there."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # ArrowInvalid, OSError, ... for truncated or non-Parquet bytes
        raise PredictionFileError(f"not a readable Parquet file: {type(exc).__name__}: {exc}") from None
    missing = [c for c in PREDICTION_REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise PredictionFileError(f"missing column(s) {missing} (has {table.column_names[:20]})")
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        columns[name] = column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
    return columns


def _window_end_ms(column: pa.ChunkedArray) -> np.ndarray:
    """A UTC timestamp (or integer epoch ms) column as (n,) int64 epoch ms."""
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:
            raise PredictionFileError("column 'window_end' is a timestamp without a time zone (want UTC)")
        ms = column.cast(pa.timestamp("ms", tz="UTC"), safe=False).cast(pa.int64())
    elif pa.types.is_integer(column.type):
        ms = column.cast(pa.int64())
    else:
        raise PredictionFileError(f"column 'window_end' has type {column.type}, want timestamp[ms, UTC]")
    if ms.null_count:
        raise PredictionFileError("column 'window_end' has nulls")
    return np.asarray(ms.to_numpy(), dtype=np.int64)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _flags(column: pa.ChunkedArray) -> np.ndarray:
    """A bool column as (n,) bool, nulls as False."""
    if not pa.types.is_boolean(column.type):
        raise PredictionFileError(f"column 'is_anomaly' has type {column.type}, want bool")
    return np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _arrow_strings(column: pa.ChunkedArray, name: str, *, nullable: bool) -> np.ndarray:
    """A string column as (n,) object array of str or None, with `_strings`' checks done in Arrow (no per-value
    Python: a million-pair run's files hold tens of millions of ids)."""
    if not nullable and column.null_count:
        raise PredictionFileError(f"column {name!r} has nulls")
    limit = LENGTHS.get(name)
    if limit is not None and len(column) > column.null_count:
        lengths = pc.min_max(pc.utf8_length(column))
        if lengths["min"].as_py() < 1 or lengths["max"].as_py() > limit:
            raise PredictionFileError(f"column {name!r} has values that are empty or longer than {limit} characters")
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)


def _strings(column: pd.Series, name: str, *, nullable: bool) -> pd.Series:
    """Values as str (None for nulls); refuses nulls unless `nullable`, and ids the database cannot store."""
    if not nullable and column.isna().any():
        raise PredictionFileError(f"column {name!r} has nulls")
    out = column.astype(object).where(column.notna(), None)
    out = out.map(lambda v: v if v is None else str(v))
    limit = LENGTHS.get(name)
    if limit is not None and out.map(lambda v: v is not None and not 1 <= len(v) <= limit).any():
        raise PredictionFileError(f"column {name!r} has values that are empty or longer than {limit} characters")
    return out


# ------------------------------------------------------------------------------------------ counting
def scored(frame: pd.DataFrame) -> pd.Series:
    """(n,) bool: windows with a score (status ok and a finite score)."""
    return (frame["status"] == "ok") & np.isfinite(frame["score"])


def anomalous(frame: pd.DataFrame) -> pd.Series:
    """(n,) bool: scored windows flagged anomalous."""
    return scored(frame) & frame["is_anomaly"]


def file_counts(frame: pd.DataFrame) -> dict[str, int]:
    """rows, anomalies (anomalous scored windows), failures (status error), windows_no_model."""
    status = frame["status"]
    return {
        "rows": len(frame),
        "anomalies": int(anomalous(frame).sum()),
        "failures": int((status == "error").sum()),
        "windows_no_model": int((status == "no_model").sum()),
    }


def failure_detail(frame: pd.DataFrame, limit: int = MAX_FAILURE_DETAIL) -> dict[str, str]:
    """{"device/sensor": reason} of the file's failed windows (first reason per pair, at most `limit` pairs)."""
    failed = frame.loc[frame["status"] == "error", ["device", "sensor", "error"]]
    failed = failed.drop_duplicates(["device", "sensor"]).head(limit)
    return {f"{d}/{s}": (e or "error")[:200] for d, s, e in zip(failed["device"], failed["sensor"], failed["error"],
                                                                  strict=True)}


def merge_details(details: list[dict[str, str]], limit: int = MAX_FAILURE_DETAIL) -> dict[str, str]:
    """Several files' failure details as one: the first `limit` entries, then {"…": "<n> more"}."""
    merged: dict[str, str] = {}
    more = 0
    for detail in details:
        for k, v in detail.items():
            if len(merged) < limit:
                merged[k] = v
            else:
                more += 1
    if more:
        merged["…"] = f"{more} more"
    return merged
