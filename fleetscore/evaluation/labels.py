"""A user's labelled events: a CSV `device,sensor,start,end`, read and checked.

Times are ISO-8601 (`2026-01-07T10:00:00Z`, any offset; a time without an offset is UTC) or epoch milliseconds
(an integer; one below 1e11 looks like epoch seconds and is refused). Other columns (e.g. the simulator's
`kind`) are kept as they are. Every problem raises `LabelError` with the file and the rows at fault.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fleetscore.evaluation.metrics import EVENT_COLUMNS

MIN_EPOCH_MS = 100_000_000_000
"""Integers below this (1973-03-03 in ms, 5138 AD in seconds) are epoch seconds, not the milliseconds asked for."""
SHOWN_ROWS = 5
"""Bad rows named in a message."""


class LabelError(ValueError):
    """The labels file is missing, unreadable, or has bad columns or times."""


def read_labels(path: Path | str) -> pd.DataFrame:
    """Labelled events from a CSV: device, sensor (str), start, end (int64 epoch ms UTC), plus any other columns,
    in file order. Raises `LabelError`."""
    path = Path(path)
    frame = _read_csv(path)
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise LabelError(f"{path}: missing column(s) {', '.join(missing)} (a labels CSV has the header "
                         f"{','.join(EVENT_COLUMNS)}; found {','.join(map(str, frame.columns)) or 'none'})")
    return check_labels(frame, str(path))


def check_labels(frame: pd.DataFrame, source: str = "labels") -> pd.DataFrame:
    """`frame` (text or numbers) as typed labels: ids non-empty, times parsed, end ≥ start. Raises `LabelError`."""
    out = frame.copy()
    for column in ("device", "sensor"):
        text = out[column].astype(str).str.strip()
        empty = out[column].isna() | (text == "")
        if empty.any():
            raise LabelError(f"{source}: empty {column} on row(s) {_rows(empty)}")
        out[column] = text
    for column in ("start", "end"):
        out[column] = parse_times(out[column], f"{source}: {column}")
    backwards = out["end"] < out["start"]
    if backwards.any():
        raise LabelError(f"{source}: end before start on row(s) {_rows(backwards)}")
    return out.reset_index(drop=True)


def parse_times(column: pd.Series, what: str) -> pd.Series:
    """ISO-8601 text (naive = UTC) or epoch-ms integers, cell by cell → int64 epoch ms. Raises `LabelError`."""
    text = column.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    is_number = numeric.notna()
    whole = is_number & (numeric == np.floor(numeric.fillna(0)))
    out = pd.Series(np.zeros(len(text), dtype=np.int64), index=column.index)
    seconds = whole & (numeric.abs() < MIN_EPOCH_MS)
    if seconds.any():
        raise LabelError(f"{what}: {text[seconds].iloc[0]!r} looks like epoch seconds; give epoch milliseconds or "
                         f"ISO-8601 (row(s) {_rows(seconds)})")
    out[whole] = numeric[whole].astype(np.int64)
    stamps = pd.to_datetime(text[~is_number], utc=True, format="ISO8601", errors="coerce")
    bad = (is_number & ~whole) | pd.Series(False, index=column.index).mask(~is_number, stamps.isna())
    if bad.any():
        raise LabelError(f"{what}: not ISO-8601 or epoch ms: {text[bad].iloc[0]!r} (row(s) {_rows(bad)})")
    good = stamps.dropna()
    out[good.index] = ((good - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")).astype(np.int64)
    return out


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise LabelError(f"{path}: no such file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: not a readable CSV ({type(exc).__name__}: {str(exc).strip()[:200]})") from None


def _rows(mask: pd.Series) -> str:
    """File row numbers (header = row 1) of the True cells, the first few."""
    rows = [int(i) + 2 for i in np.flatnonzero(mask.to_numpy())]
    more = f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else ""
    return ", ".join(map(str, rows[:SHOWN_ROWS])) + more
