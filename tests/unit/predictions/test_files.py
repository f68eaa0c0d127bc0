"""Reading a prediction file."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from fleetscore.predictions.files import read_predictions
from tests.helpers.fleet import (
    RUN_A,
    T0,
    W,
    prediction_file,
    series,
)


def test_read_predictions_turns_the_contract_into_plain_columns():
    data = prediction_file(series("d-1", "temp", T0, 3, {1}), RUN_A)
    frame = read_predictions(data)
    assert frame["window_end"].tolist() == [T0, T0 + W, T0 + 2 * W]
    assert frame["is_anomaly"].tolist() == [False, True, False]
    assert frame["status"].tolist() == ["ok"] * 3 and frame["error"].tolist() == [None] * 3
    # dictionary-encoded strings (pandas Categoricals) are read as plain strings
    table = pq.read_table(pa.BufferReader(data))
    table = table.set_column(table.schema.get_field_index("status"), "status",
                             table.column("status").dictionary_encode())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    assert read_predictions(sink.getvalue().to_pybytes())["status"].tolist() == ["ok"] * 3


def _with_column(data: bytes, name: str, values: list) -> bytes:
    table = pq.read_table(pa.BufferReader(data))
    table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_string_columns_are_checked_in_arrow_not_value_by_value(monkeypatch):
    """A million-pair run's files hold tens of millions of ids: reading them runs no Python per value (the
    per-value path is only for ids stored as other types), with the same checks and values as before."""
    import pytest

    from fleetscore.predictions import files

    data = prediction_file(series("d-1", "temp", T0, 3, {1}, status="ok"), RUN_A)
    monkeypatch.setattr(files, "_strings", lambda *a, **k: (_ for _ in ()).throw(AssertionError("per value")))
    frame = read_predictions(data)
    assert frame["device"].tolist() == ["d-1"] * 3 and frame["run_id"].tolist() == [RUN_A] * 3
    assert frame["error"].tolist() == [None] * 3 and all(type(v) is str for v in frame["sensor"])
    for name, values, message in (("device", ["d-1", None, "d-1"], "nulls"), ("sensor", ["t", "", "t"], "empty"),
                                  ("device", ["d" * 65, "d", "d"], "longer")):
        with pytest.raises(files.PredictionFileError, match=message):
            read_predictions(_with_column(data, name, values))
