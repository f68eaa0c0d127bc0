"""The local pool carries a worker's init failure (a bad pack) back to the run, instead of BrokenProcessPool."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.svm import OneClassSVM

from fleetscore.backends.local import PartitionPool, score_partitions
from scoring_job.pack import MANIFEST, PackError, manifest_sha256, write_pack


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(3)
    write_pack({("d-1", "temp"): OneClassSVM(nu=0.1).fit(rng.normal(size=(40, 4)))}, tmp_path / "pack", version="v1")
    parts = []
    for i in range(3):
        path = tmp_path / f"part-{i:05d}.parquet"
        pd.DataFrame({"device": ["d-1"], "sensor": ["temp"], "window_end": pd.to_datetime([1_800_000_000_000 + i],
                                                                                          unit="ms", utc=True),
                      "n": [3], "sum": [3.0], "sumsq": [3.0], "min": [1.0], "max": [1.0]}).to_parquet(path)
        parts.append(path)
    return tmp_path / "pack", parts, tmp_path / "out"


def test_a_tampered_array_file_raises_the_pack_error_from_the_pool(inputs):
    pack, parts, out = inputs
    shard = pack / "svm-000.npz"
    data = bytearray(shard.read_bytes())
    data[-30] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(PackError, match="svm-000.npz: SHA-256 or size mismatch"):
        score_partitions(parts, pack, out, "r1", workers=2)


def test_a_pack_edited_after_its_pin_is_refused_by_every_worker(inputs):
    pack, parts, out = inputs
    digest = manifest_sha256((pack / MANIFEST).read_bytes())
    rows = score_partitions(parts, pack, out, "r1", workers=2, model_sha256=digest)
    assert rows["status"].tolist() == ["ok"] * 3
    (pack / MANIFEST).write_bytes((pack / MANIFEST).read_bytes() + b"\n")
    with pytest.raises(PackError, match="pinned when the pack was activated"):
        score_partitions(parts, pack, out, "r1", workers=2, model_sha256=digest)


def test_the_feed_stops_at_the_first_worker_failure(inputs):
    pack, parts, out = inputs
    pool = PartitionPool(pack, out, "r1", workers=1, model_sha256="0" * 64)
    pool.add(parts[0])
    with pytest.raises(PackError):
        pool.results()
    pool = PartitionPool(pack, out, "r1", workers=1, model_sha256="0" * 64)
    pool.add(parts[0])
    pool._futures[0].exception(timeout=60)  # the first mini-batch has failed
    with pytest.raises(PackError, match="pinned"):
        pool.add(parts[1])  # the export stops here instead of writing every partition first
