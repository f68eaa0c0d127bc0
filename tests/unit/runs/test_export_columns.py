"""The columnar export cuts the same partitions, byte for byte, as the row-by-row reference (whole devices, at most
PARTITION_MODELS pairs, context rows, pairs without a scored window dropped), whatever the batch size."""

from __future__ import annotations

import io
import random
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import itemgetter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fleetscore.db import columnar
from fleetscore.runs import export
from scoring_job.contract import PARTITION_SCHEMA


# --- the row-by-row reference: the export before it read columns, kept here as the oracle -----------------------
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
    pq.write_table(table, buf, compression=export.PARTITION_COMPRESSION, use_dictionary=["device", "sensor"])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------------


def _rows(rng: random.Random) -> list[tuple]:
    rows = []
    for d in range(rng.randint(1, 40)):
        for s in range(rng.randint(1, 6)):
            for e in sorted(rng.sample(range(30), rng.randint(1, 8))):
                rows.append((f"d{d:03d}", f"s{s}", e * 1000, 3, 1.0 * e, 2.0, 0.5, 1.5))
    return rows


@pytest.mark.parametrize("trial", range(30))
def test_columnar_partitions_equal_the_row_by_row_ones(trial):
    rng = random.Random(trial)
    rows = _rows(rng)
    window_from = rng.choice([None, 10_000, 20_000])
    limit = rng.randint(1, 12)
    batch = rng.choice([1, 3, 17, 1000])
    since = -1 if window_from is None else window_from
    source = iter(rows) if window_from is None else scored_pairs_only(iter(rows), window_from)
    want = [partition_bytes(p, since) for p in device_partitions(source, limit)]
    batches = columnar.tuple_tables(iter(rows), export.ROW_SCHEMA, batch)
    tables = export.partition_tables(batches, since, limit, scored_only=window_from is not None)
    assert [export.table_bytes(t) for t in tables] == want
