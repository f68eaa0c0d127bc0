"""Export a claimed run's closed windows as Parquet partitions of whole devices, then its manifest.

When the active pack's features look back (change-z: `scoring_job.pack.lookback_windows`), each pair's windows
of that many windows before the run's range go with it as context rows (`context` true): read by the scoring
job for baselines and announced changes, never scored. A pair with no window in the range exports nothing."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby
from operator import itemgetter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import clock, db
from fleetscore.runs.claims import Claim
from fleetscore.runs.manifest import Partition, RunManifest
from fleetscore.storage.base import BlobStore
from fleetscore.storage.paths import partition_key, partition_name, run_manifest_key
from scoring_job.contract import PARTITION_SCHEMA


def device_partitions(rows: Iterable[tuple], partition_models: int) -> Iterator[list[tuple]]:
    """Cut window rows sorted by (device, sensor, window_end) into partitions of whole devices holding at
    most `partition_models` device+sensor pairs (more only when one device alone has more)."""
    part: list[tuple] = []
    pairs = 0
    for _device, group in groupby(rows, key=itemgetter(0)):
        device_rows = list(group)
        device_pairs = len({r[1] for r in device_rows})
        if part and pairs + device_pairs > partition_models:
            yield part
            part, pairs = [], 0
        part.extend(device_rows)
        pairs += device_pairs
    if part:
        yield part


def scored_pairs_only(rows: Iterable[tuple], window_from: int) -> Iterator[tuple]:
    """The rows (sorted by device, sensor, window_end) of the pairs that have a window after `window_from`."""
    for _pair, group in groupby(rows, key=itemgetter(0, 1)):
        pair_rows = list(group)
        if pair_rows[-1][2] > window_from:
            yield from pair_rows


def partition_bytes(rows: list[tuple], window_from: int | None = None) -> bytes:
    """One partition's window rows (WINDOW_SCHEMA order, window_end epoch ms) as Parquet (PARTITION_SCHEMA: rows
    ending at or before `window_from` are context); equal rows give equal bytes."""
    device, sensor, end, n, total, sumsq, lo, hi = zip(*rows, strict=True)
    numeric = [np.array(col, dtype=np.float64) for col in (total, sumsq, lo, hi)]
    ends = np.array(end, dtype=np.int64)
    context = ends <= window_from if window_from is not None else np.zeros(len(ends), dtype=bool)
    table = pa.Table.from_arrays(
        [pa.array(device, pa.string()), pa.array(sensor, pa.string()),
         pa.array(ends).cast(PARTITION_SCHEMA.field("window_end").type),
         pa.array(np.array(n, dtype=np.int64)), *(pa.array(col) for col in numeric), pa.array(context)],
        schema=PARTITION_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def export_run(engine: Engine, store: BlobStore, claim: Claim, *, model_version: str, window_ms: int,
               partition_models: int, progress: Callable[[int, int], None] | None = None,
               on_partition: Callable[[str], None] | None = None, lookback_windows: int = 0) -> RunManifest:
    """Write the claim's windows to `data/<run_id>/part-NNNNN.parquet` and the run manifest; with
    `lookback_windows`, each pair's windows that far before the range as context rows (module docstring).

    One ordered query streamed in chunks; memory is bounded by one partition. `on_partition(key)` is
    called as each partition is written (the local backend starts scoring it at once).
    """
    w = db.windows
    query = (sa.select(w.c.device, w.c.sensor, w.c.window_end, w.c.n, w.c.sum, w.c.sumsq, w.c.min, w.c.max)
             .where(w.c.window_end > claim.window_from - lookback_windows * window_ms,
                    w.c.window_end <= claim.window_until)
             .order_by(w.c.device, w.c.sensor, w.c.window_end))
    manifest = RunManifest(run_id=claim.run_id, slot=claim.slot_ms, window_from=claim.window_from,
                           window_until=claim.window_until, model_version=model_version,
                           window_minutes=window_ms // 60_000, created_at=clock.now_ms())
    with engine.connect() as conn:
        rows_in = db.iter_tuples(conn, query)
        if lookback_windows:
            rows_in = scored_pairs_only(rows_in, claim.window_from)
        for number, rows in enumerate(device_partitions(rows_in, partition_models)):
            name = partition_name(number)
            store.put(partition_key(claim.run_id, name), partition_bytes(rows, claim.window_from))
            if on_partition:
                on_partition(partition_key(claim.run_id, name))
            manifest.partitions.append(Partition(name=name, pairs=len({(r[0], r[1]) for r in rows}),
                                                 windows=sum(r[2] > claim.window_from for r in rows)))
            if progress:
                progress(number + 1, 0)
    store.put(run_manifest_key(claim.run_id), manifest.to_json())
    return manifest
