"""The data contracts between Core and the scoring job: one owner for each schema and status set.

Core (`fleetscore`) imports these names from here; the scoring job uses them as they are, since Azure ML
uploads this folder alone (so this module imports pyarrow and the standard library only).

* A **partition** (`data/<run_id>/part-NNNNN.parquet`) holds closed tumbling windows: :data:`PARTITION_SCHEMA`,
  `window_end` the window's end (epoch ms UTC; the window is (end − W, end]), `n` readings and their `sum`,
  `sumsq`, `min`, `max` in the sensor's unit, and `context`: true for the windows before the run's range that
  change features need (`pack.lookback`: every pair's baseline, the announce sensors' longer lookback), read but
  never scored (a partition without the column has none).
* A **prediction file** (`predictions/<run_id>/part-NNNNN.parquet`) has one row per scored window:
  :data:`PREDICTION_SCHEMA`. `score` is the negated decision function (higher is more anomalous);
  `threshold` and `threshold_strong` are the window's model's calibrated alert thresholds on that score (from
  the model pack, learned from training windows only; NaN when the window has no model or failed); `is_anomaly`
  ⇔ score > threshold, and score > threshold_strong marks a window far above it; `status` is one of
  :data:`WINDOW_STATUSES`.
* The entry script's `run(mini_batch)` returns one row per partition scored or item skipped (none for a failed
  partition): :data:`RESULT_COLUMNS`, `status` one of :data:`PARTITION_STATUSES`.
"""

from __future__ import annotations

import re

import pyarrow as pa

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
"""A device or sensor id (the Reading contract), matched whole: 1-64 characters of [A-Za-z0-9._:-]. Ingest refuses
a reading with any other id, and a model pack whose keys are not such ids."""

WINDOW_SCHEMA = pa.schema([
    ("device", pa.string()), ("sensor", pa.string()), ("window_end", pa.timestamp("ms", tz="UTC")),
    ("n", pa.int64()), ("sum", pa.float64()), ("sumsq", pa.float64()), ("min", pa.float64()),
    ("max", pa.float64()),
])
WINDOW_COLUMNS: tuple[str, ...] = tuple(WINDOW_SCHEMA.names)
CONTEXT_COLUMN = "context"
PARTITION_SCHEMA = WINDOW_SCHEMA.append(pa.field(CONTEXT_COLUMN, pa.bool_()))

PREDICTION_SCHEMA = pa.schema([
    ("device", pa.string()),
    ("sensor", pa.string()),
    ("window_end", pa.timestamp("ms", tz="UTC")),
    ("n", pa.int64()),
    ("mean", pa.float64()),
    ("min", pa.float64()),
    ("max", pa.float64()),
    ("std", pa.float64()),
    ("score", pa.float64()),
    ("threshold", pa.float64()),
    ("threshold_strong", pa.float64()),
    ("is_anomaly", pa.bool_()),
    ("model_version", pa.string()),
    ("run_id", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
])
PREDICTION_COLUMNS: tuple[str, ...] = tuple(PREDICTION_SCHEMA.names)

WINDOW_STATUSES = ("ok", "no_model", "error", "settling")
"""A scored window's `status`: scored, no model for its pair, its model or features failed, or not judged because
it falls in an announced change of its device (`change.SETTLE_WINDOWS` after an announce sensor changed)."""

RESULT_COLUMNS = ("partition", "rows", "models", "anomalies", "windows_no_model", "failures", "failure_detail",
                  "status", "error")
PARTITION_STATUSES = ("ok", "partial", "error", "skipped")
"""A mini-batch item's result `status`: every window scored, some windows failed (a model failed), no prediction
file written (the partition failed: `run()` returns no row for it, so the parallel runners count it as a failed
item), or not a partition file (skipped, e.g. the run manifest in the v2 input folder)."""
PARTITION_SUFFIX = ".parquet"
"""Partition files end with this; anything else in `data/<run_id>/` is not scored."""

DATA_CONTAINER = "data"
"""Partitions to score: `data/<run_id>/part-NNNNN.parquet` and the run manifest `data/<run_id>/manifest.json`."""
MODELS_CONTAINER = "models"
"""Model packs: `models/<version>/manifest.json` + arrays, and the `models/CURRENT` pointer."""
PREDICTIONS_CONTAINER = "predictions"
"""Prediction files: `predictions/<run_id>/part-NNNNN.parquet`, named as the partition they score."""
JOB_CONTAINERS = (DATA_CONTAINER, MODELS_CONTAINER, PREDICTIONS_CONTAINER)
"""The containers the scoring job reads and writes (an Azure ML datastore each)."""
PREDICTION_REQUIRED_COLUMNS = ("device", "sensor", "window_end", "score", "is_anomaly", "model_version", "run_id",
                               "status")
"""What a reader of prediction files needs; the feature columns and `error` may be absent."""
