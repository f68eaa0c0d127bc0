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
