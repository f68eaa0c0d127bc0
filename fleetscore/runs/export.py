"""Export a claimed run's closed windows as Parquet partitions of whole devices, then its manifest.

When the active pack's features look back (change-z: `scoring_job.pack.lookback`), windows before the run's range go
with it as context rows (`context` true): every pair's last few (its baseline) and its device's announce sensors'
further back (a change they announced just before the range), read by the scoring job, never scored. A pair with no
window in the range exports nothing.

The rows stream as columns (Arrow batches: `db.arrow_batches`, through ADBC on SQLite files and PostgreSQL, so no
Python object per value; through the DB-API driver elsewhere): partitioning, the context flags and the manifest
counts are vectorised. The devices are cut into ranges of about `partition_models` pairs at the pairs of the last
window (`range_cuts`); each range's query seeks its devices in every window end of the run (`window_ends`) rather
than scanning all of them, and its rows are few enough to sort in memory (unless the last window holds far fewer
pairs than the first: `MAX_RANGE_GROWTH`): the ADBC SQLite reader sorts them in Arrow, in less than half the time
SQLite's sorter takes (1,000,000 pairs × 18 rows in two streams: the readers used 23 s of CPU with one ordered query
per stream, 16 s with a query per range sorted in the reader). With `streams` > 1 the ranges are read in that many
blocks of adjacent ranges, each by a thread of its own (the reads run in the database or in ADBC's child process,
outside the GIL). A run over more window ends than a query lists (`MAX_SEEK_ENDS`) reads one ordered query per
stream instead. Stream k numbers its partitions k, k + streams, ...: the same rows give the same names, so a retry
rewrites the same files."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fleetscore import clock, db
from fleetscore.runs.claims import Claim
from fleetscore.runs.manifest import Partition, RunManifest
from fleetscore.storage.base import BlobStore
from fleetscore.storage.paths import partition_key, partition_name, run_manifest_key
from scoring_job.contract import PARTITION_SCHEMA
from scoring_job.pack import Lookback
from scoring_job.score import text_columns

BATCH_ROWS = 100_000
"""Window rows read into columns at a time."""
PARTITION_COMPRESSION = "lz4"
"""Partition files' Parquet codec: they are read once, by the scoring job, right after; lz4 writes and reads them
faster than zstd (at 1,000,000 pairs ~2 s less CPU per run) for ~10 % more bytes."""
COLUMNAR_MIN_ROWS = 200_000
"""Fewer rows expected (the last window's pairs × the windows a run reads) read through the DB-API driver: the ADBC
SQLite reader's process start (~0.2 s) costs more than such a read (the 100-device demo's 25 runs: score+index
9.1 s with the reader for every run)."""
MAX_RANGE_GROWTH = 2
"""Each range's rows are sorted in the reader's memory only when the first window the run reads holds at most this
many times the pairs of the last (which cut the ranges): a last window that most devices missed (late, say) makes
every range that much larger; such a run's queries are sorted by the database (streamed, as before)."""
MAX_SEEK_ENDS = 1000
"""The most window ends a stream's query lists (an IN of literals; SQL Server binds at most 2,100 parameters): a run
over more (the first after a long stop) scans its range once per stream instead."""
ORDER = ("device", "sensor", "window_end")
"""The order of the export query's rows, as partitions hold them."""
ROW_SCHEMA = PARTITION_SCHEMA.remove(PARTITION_SCHEMA.get_field_index("context")).set(
    PARTITION_SCHEMA.get_field_index("window_end"), pa.field("window_end", pa.int64()))
"""The export query's columns as read (window_end epoch ms); PARTITION_SCHEMA less the context flag."""


def partition_tables(batches: Iterable[pa.Table], window_from: int, partition_models: int, *,
                     scored_only: bool) -> Iterator[pa.Table]:
    """Batches of the export query's rows (ROW_SCHEMA, sorted by device, sensor, window_end) as partition tables
    (PARTITION_SCHEMA) of whole devices with at most `partition_models` pairs, rows ending at or before
    `window_from` flagged as context; with `scored_only`, the pairs without a window after it dropped."""
    tables = _whole_devices(_partition_columns(t, window_from) for t in batches)
    if scored_only:
        tables = (_scored_pairs(t, window_from) for t in tables)
    return _partition_tables(tables, partition_models)


def export_run(engine: Engine, store: BlobStore, claim: Claim, *, model_version: str, window_ms: int,
               partition_models: int, progress: Callable[[int, int], None] | None = None,
               on_partition: Callable[[str], None] | None = None, lookback: Lookback = Lookback(),
               columnar: bool = True, streams: int = 1) -> RunManifest:
    """Write the claim's windows to `data/<run_id>/part-NNNNN.parquet` and the run manifest; with a `lookback`, the
    windows it names before the range as context rows (module docstring).

    One ordered query per stream, streamed in batches; memory is bounded by a batch and a partition per stream.
    `on_partition(key)` is called as each partition is written (the local backend starts scoring it at once), one
    call at a time. `columnar=False` reads through the DB-API driver even where ADBC serves the database (the same
    bytes, slower). `streams` > 1 reads that many device ranges side by side (`device_ranges`).
    """
    manifest = RunManifest(run_id=claim.run_id, slot=claim.slot_ms, window_from=claim.window_from,
                           window_until=claim.window_until, model_version=model_version,
                           window_minutes=window_ms // 60_000, created_at=clock.now_ms())
    condition = sa.and_(_since(claim.window_from, lookback, window_ms), db.windows.c.window_end <= claim.window_until)
    with engine.connect() as conn:
        latest, pairs = last_window(conn, claim.window_until)
        cuts = range_cuts(conn, latest, partition_models) if pairs >= 2 * partition_models else []
        ends = window_ends(conn, claim.window_from - _lookback_windows(lookback) * window_ms, claim.window_until,
                           limit=MAX_SEEK_ENDS) if cuts else []
        seeks = bool(ends) and len(ends) <= MAX_SEEK_ENDS
        small = seeks and _pair_count(conn, ends[0]) <= MAX_RANGE_GROWTH * pairs
    ranges = stream_ranges(cuts, streams)
    if seeks:  # each query seeks its devices in every window end
        condition = sa.and_(condition, db.windows.c.window_end.in_(ends))
    else:  # a query would scan every window end: one per stream
        ranges = [[(block[0][0], block[-1][1])] for block in ranges]
    windows = (claim.window_until - claim.window_from) // window_ms + _lookback_windows(lookback)
    columnar = columnar and pairs * windows >= COLUMNAR_MIN_ROWS
    written: list[Partition] = []
    lock = threading.Lock()
    failed = threading.Event()

    def export_stream(k: int, block: list[tuple[str | None, str | None]]) -> None:
        """The partitions of the devices in the ranges of `block` (adjacent, in order), numbered k, k + len(ranges),
        ... (names as retries give them)."""
        try:
            queries = [_export_query(condition, lo, hi) for lo, hi in block]
            with engine.connect() as conn, closing(db.arrow_batches(
                    conn, queries, ROW_SCHEMA, order_by=ORDER, small=small, batch_rows=BATCH_ROWS,
                    columnar=columnar)) as batches:  # its reader closed here, however the stream ends
                tables = partition_tables(batches, claim.window_from, partition_models, scored_only=bool(
                    lookback.windows or lookback.announce_windows))
                for j, table in enumerate(tables):
                    if failed.is_set():
                        return
                    name = partition_name(j * len(ranges) + k)
                    store.put(partition_key(claim.run_id, name), table_bytes(table))
                    with lock:
                        if on_partition:
                            on_partition(partition_key(claim.run_id, name))
                        written.append(Partition(name=name, pairs=int(_pair_starts(table).sum()), windows=len(
                            table) - int(pc.sum(table["context"]).as_py() or 0)))
                        if progress:
                            progress(len(written), 0)
        except BaseException:
            failed.set()
            raise

    if len(ranges) == 1:
        export_stream(0, ranges[0])
    else:
        with ThreadPoolExecutor(len(ranges), thread_name_prefix="export") as pool:
            for future in [pool.submit(export_stream, k, block) for k, block in enumerate(ranges)]:
                future.result()
    manifest.partitions = sorted(written, key=lambda p: p.name)
    store.put(run_manifest_key(claim.run_id), manifest.to_json())
    return manifest


def _export_query(condition: sa.ColumnElement[bool], lo: str | None, hi: str | None) -> sa.Select:
    """The windows matching `condition` of the devices in [lo, hi) (None: unbounded), unordered (`ORDER`)."""
    w = db.windows
    query = sa.select(w.c.device, w.c.sensor, w.c.window_end, w.c.n, w.c.sum, w.c.sumsq, w.c.min, w.c.max)
    query = query.where(condition)
    if lo is not None:
        query = query.where(w.c.device >= lo)
    if hi is not None:
        query = query.where(w.c.device < hi)
    return query


def last_window(conn: Connection, window_end: int) -> tuple[int | None, int]:
    """The last window end at or before `window_end` (None: no window) and how many pairs have a window there."""
    w = db.windows
    latest = conn.execute(sa.select(sa.func.max(w.c.window_end)).where(w.c.window_end <= window_end)).scalar()
    if latest is None:
        return None, 0
    return int(latest), _pair_count(conn, int(latest))


def _pair_count(conn: Connection, window_end: int) -> int:
    """How many pairs have a window ending at `window_end`."""
    return conn.execute(sa.select(sa.func.count()).where(db.windows.c.window_end == window_end)).scalar_one()


def range_cuts(conn: Connection, latest: int | None, partition_models: int) -> list[str]:
    """The devices that cut the pairs (by device, sensor) of the window ending at `latest` (`last_window`) into runs
    of about `partition_models` pairs, each cut at the start of a device: one index seek and skip per cut.
    Deterministic for the same rows."""
    cuts: list[str] = []
    if latest is None:
        return cuts
    while (cut := conn.execute(_device_at(latest, cuts[-1] if cuts else None, partition_models)).scalar()) is not None:
        if cuts and cut == cuts[-1]:  # one device holds more pairs than that: the cut moves to the next device
            cut = conn.execute(_device_at(latest, cut, 0, after=True)).scalar()
            if cut is None:
                break
        cuts.append(cut)
    return cuts


def _device_at(window_end: int, start: str | None, offset: int, *, after: bool = False) -> sa.Select:
    """The device of the `offset`-th pair (by device, sensor) with a window ending at `window_end`, counted from
    device `start` (None: the first; `after`: the device after it)."""
    w = db.windows
    query = sa.select(w.c.device).where(w.c.window_end == window_end)
    if start is not None:
        query = query.where(w.c.device > start if after else w.c.device >= start)
    return query.order_by(w.c.device, w.c.sensor).offset(offset).limit(1)


def stream_ranges(cuts: list[str], streams: int) -> list[list[tuple[str | None, str | None]]]:
    """The device ranges [lo, hi) between `cuts` (the first from None, the last to None: every device) in at most
    `streams` blocks of adjacent ranges, as many ranges in each as can be (the earlier blocks take the remainder)."""
    bounds: list[str | None] = [None, *cuts, None]
    ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
    count = min(max(streams, 1), len(ranges))
    sizes = [len(ranges) // count + (k < len(ranges) % count) for k in range(count)]
    starts = np.cumsum([0, *sizes]).tolist()
    return [ranges[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]


def window_ends(conn: Connection, after: int, until: int, *, limit: int | None = None) -> list[int]:
    """The distinct window ends in (after, until], one index seek each (windows' key starts with window_end); with a
    `limit`, at most limit + 1 of them (the caller then knows there are more)."""
    w = db.windows
    ends: list[int] = []
    while limit is None or len(ends) <= limit:
        end = conn.execute(sa.select(sa.func.min(w.c.window_end)).where(w.c.window_end > after,
                                                                       w.c.window_end <= until)).scalar()
        if end is None:
            break
        ends.append(after := int(end))
    return ends


def _lookback_windows(lookback: Lookback) -> int:
    """How many windows before the range the export reads for any sensor."""
    return max(lookback.windows, lookback.announce_windows if lookback.announce else 0)


def _since(window_from: int, lookback: Lookback, window_ms: int) -> sa.ColumnElement[bool]:
    """The export's lower bound on window_end: `lookback.windows` before the range, the announce sensors'
    `lookback.announce_windows`."""
    w = db.windows
    since = w.c.window_end > window_from - lookback.windows * window_ms
    if not lookback.announce or lookback.announce_windows <= lookback.windows:
        return since
    return sa.or_(since, sa.and_(w.c.sensor.in_(lookback.announce),
                                 w.c.window_end > window_from - lookback.announce_windows * window_ms))


def table_bytes(table: pa.Table) -> bytes:
    """A partition table (PARTITION_SCHEMA) as Parquet (PARTITION_COMPRESSION; dictionary encoding for the text
    columns only, as prediction files: `score.text_columns`); equal rows give equal bytes."""
    buf = io.BytesIO()
    pq.write_table(table.combine_chunks(), buf, compression=PARTITION_COMPRESSION, use_dictionary=text_columns(table))
    return buf.getvalue()


def _partition_columns(rows: pa.Table, window_from: int) -> pa.Table:
    """A batch of the export query's rows (ROW_SCHEMA) as PARTITION_SCHEMA: window_end as a timestamp, rows ending at
    or before `window_from` flagged as context."""
    ends = rows["window_end"]
    return pa.Table.from_arrays(
        [*(rows[name] for name in ROW_SCHEMA.names if name != "window_end"),
         ends.cast(PARTITION_SCHEMA.field("window_end").type), pc.less_equal(ends, window_from)],
        names=[*(name for name in ROW_SCHEMA.names if name != "window_end"), "window_end", "context"],
    ).select(PARTITION_SCHEMA.names).cast(PARTITION_SCHEMA)


def _starts(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(n,) bool: row i starts a new run of equal values (row 0 always); compared in Arrow (no Python strings)."""
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    out = np.ones(len(values), dtype=bool)
    if len(values) > 1:
        out[1:] = pc.not_equal(values.slice(1), values.slice(0, len(values) - 1)).to_numpy(zero_copy_only=False)
    return out


def _pair_starts(table: pa.Table) -> np.ndarray:
    """(n,) bool: row i is a pair's first row (rows sorted by device, sensor)."""
    return _starts(table["device"]) | _starts(table["sensor"])


def _whole_devices(batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The batches re-cut so that every table holds whole devices (a batch's last device waits for the next)."""
    carry: pa.Table | None = None
    for table in batches:
        table = pa.concat_tables([carry, table]) if carry is not None else table
        last = int(np.flatnonzero(_starts(table["device"]))[-1])
        carry = table.slice(last)
        if last:
            yield table.slice(0, last)
    if carry is not None and len(carry):
        yield carry


def _scored_pairs(table: pa.Table, window_from: int) -> pa.Table:
    """The rows of the pairs that have a window after `window_from` (tables of whole pairs)."""
    if not len(table):
        return table
    pair = np.cumsum(_pair_starts(table)) - 1
    scored = np.zeros(pair[-1] + 1, dtype=bool)
    scored[pair[~table["context"].to_numpy()]] = True
    return table.filter(pa.array(scored[pair]))


def _partition_tables(tables: Iterable[pa.Table], partition_models: int) -> Iterator[pa.Table]:
    """Tables of whole devices cut into partitions of at most `partition_models` device+sensor pairs (more only
    when one device alone has more), in order."""
    parts: list[pa.Table] = []
    pairs = 0
    for table in tables:
        if not len(table):
            continue
        device_first = np.flatnonzero(_starts(table["device"]))
        device_pairs = np.add.reduceat(_pair_starts(table).astype(np.int64), device_first)
        bounds = [*device_first.tolist(), len(table)]
        begin = 0
        for i, count in enumerate(device_pairs.tolist()):
            if (parts or bounds[i] > begin) and pairs + count > partition_models:
                parts.append(table.slice(begin, bounds[i] - begin))
                yield pa.concat_tables([p for p in parts if len(p)])
                parts, pairs, begin = [], 0, bounds[i]
            pairs += count
        parts.append(table.slice(begin))
    if pairs:
        yield pa.concat_tables([p for p in parts if len(p)])
