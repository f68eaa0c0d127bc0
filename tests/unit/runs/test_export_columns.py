"""The columnar export cuts the same partitions, byte for byte, as the row-by-row reference (whole devices, at most
PARTITION_MODELS pairs, context rows, pairs without a scored window dropped), whatever the batch size."""

from __future__ import annotations

import random

import pytest

from fleetscore.db import columnar
from fleetscore.runs import export


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
    source = iter(rows) if window_from is None else export.scored_pairs_only(iter(rows), window_from)
    want = [export.partition_bytes(p, since) for p in export.device_partitions(source, limit)]
    batches = columnar.tuple_tables(iter(rows), export.ROW_SCHEMA, batch)
    tables = export._whole_devices(export._partition_columns(t, since) for t in batches)
    if window_from is not None:
        tables = (export._scored_pairs(t, window_from) for t in tables)
    assert [export.table_bytes(t) for t in export._partition_tables(tables, limit)] == want
