"""Bulk import: readings from CSV, JSON lines or Parquet files, in chunks, through the ingest path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import tzinfo
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine

from fleetscore import telemetry
from fleetscore.ingest.readings import decode_records
from fleetscore.ingest.store import IngestResult, store_batch

REFERENCE_COLUMNS = {"TS": "ts", "Device": "device", "Sensor": "sensor", "Value": "value"}
"""The original reference's CSV columns."""
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    for suffix in reversed(suffixes):
        if suffix in FORMATS:
            return FORMATS[suffix]
    raise ValueError(f"{path}: unknown format (expected one of {sorted(FORMATS)})")


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.rename(columns={k: v for k, v in REFERENCE_COLUMNS.items() if k in frame.columns})
    missing = {"device", "sensor", "ts", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"missing column(s) {sorted(missing)}; expected device, sensor, ts, value "
                         f"(or the reference's TS, Device, Sensor, Value)")
    return frame


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts of plain Python values (timestamps become ISO strings, NaN stays NaN)."""
    out = []
    ts = frame["ts"]
    if pd.api.types.is_datetime64_any_dtype(ts):  # Parquet: a naive timestamp becomes a naive string
        ts = ts.map(lambda t: t.isoformat() if pd.notna(t) else None)
    for device, sensor, t, value in zip(frame["device"].tolist(), frame["sensor"].tolist(), ts.tolist(),
                                        frame["value"].tolist(), strict=True):
        out.append({"device": device, "sensor": sensor, "ts": t, "value": value})
    return out


def read_chunks(path: Path, chunk_rows: int = 50_000) -> Iterator[list[dict]]:
    """Yield the file's rows as reading dicts, `chunk_rows` at a time."""
    readers = {"csv": _csv_chunks, "jsonl": _jsonl_chunks, "parquet": _parquet_chunks}
    return readers[file_format(path)](path, chunk_rows)


def _csv_chunks(path: Path, chunk_rows: int) -> Iterator[list[dict]]:
    """CSV cells are text: a numeric `value` becomes a float (other text is left for validation to refuse),
    a numeric `ts` epoch seconds/ms."""
    reader = pd.read_csv(path, chunksize=chunk_rows, dtype={"device": str, "sensor": str, "Device": str,
                                                          "Sensor": str, "ts": str, "TS": str},
                         keep_default_na=False, na_values=[""])
    for chunk in reader:
        chunk = _normalise(chunk)
        numeric = pd.to_numeric(chunk["value"], errors="coerce")
        chunk["value"] = numeric.astype(object).where(numeric.notna(), chunk["value"])
        chunk["ts"] = chunk["ts"].map(_csv_ts)
        yield _records(chunk)


def _jsonl_chunks(path: Path, chunk_rows: int) -> Iterator[list[dict]]:
    """One JSON object a line; a line that is not one becomes a record validation refuses (and keeps)."""
    with path.open("r", encoding="utf-8") as fh:
        batch: list[dict] = []
        for line in fh:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                item = {"_unparsable_line": line.rstrip("\n")[:1000]}
            batch.append(item if isinstance(item, dict) else {"_not_an_object": item})
            if len(batch) >= chunk_rows:
                yield batch
                batch = []
        if batch:
            yield batch


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[list[dict]]:
    for record_batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        yield _records(_normalise(record_batch.to_pandas()))


def _csv_ts(text: object) -> object:
    """CSV cells are text: a numeric cell is epoch seconds/ms, anything else stays a string."""
    if not isinstance(text, str):
        return text
    try:
        return float(text) if text.strip().lstrip("-").replace(".", "", 1).isdigit() else text
    except ValueError:
        return text


def count_rows(path: Path) -> int | None:
    """Rows in a file when cheap to know (Parquet metadata), else None."""
    if file_format(path) == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return None


def ingest_file(engine: Engine, path: Path, *, window_ms: int, naive_tz: tzinfo,
                chunk_rows: int = 50_000, progress: Callable[[int], None] | None = None) -> IngestResult:
    """Validate and store a file's readings chunk by chunk (one transaction per chunk).

    Naive timestamps in files are read in `naive_tz` (UTC unless told otherwise).
    """
    total = IngestResult()
    for records in read_chunks(path, chunk_rows):
        decoded = decode_records(records, naive_tz=naive_tz)
        with engine.begin() as conn:
            chunk = store_batch(conn, decoded, source=f"file:{path.name}", window_ms=window_ms)
        telemetry.ingested(chunk.stored, chunk.late, chunk.dead_reasons)
        total += chunk
        if progress is not None:
            progress(len(records))
    return total
