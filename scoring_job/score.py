"""The scoring job's entry script: the same file for the local process pool, Azure ML SDK v1 ParallelRunStep and
the SDK v2 parallel job.

``init()`` runs once per worker process: it parses its own arguments out of ``sys.argv`` (the platforms add
theirs; unknown ones are ignored) and loads the model pack once into module globals::

    --model_pack PATH   a pack folder (manifest.json + arrays), e.g. the mounted side input
    --model_pack_sha256 HEX   the SHA-256 of the pack's manifest.json that ``models/CURRENT`` pinned (the run
                        service passes it on every backend): a pack edited since is refused; without it, unpinned
    --output PATH       folder for the predictions: one Parquet file per partition, same file name
    --run_id ID         written into every prediction row
    --dtype float64|float32   (default float64; float32 rechecks near-zero windows in float64)

``run(mini_batch)`` gets a list of partition Parquet paths (columns device, sensor, window_end, n, sum, sumsq, min,
max), scores each whole partition with the vectorised engine, writes ``<output>/<basename>`` atomically (temp
file + os.replace) and deterministically (sorted rows, fixed schema, no index: re-running writes identical
bytes) and returns one result row per partition it scored. Failures count the way the parallel runners count
them (ParallelRunStep, SDK v2 parallel job): an item without a result row is a failed item, and a mini-batch that
returns fewer rows than items is a failed mini-batch, retried (``run_max_try`` / ``retry_settings.max_retries``)
and then counted against ``error_threshold`` / ``allowed_failed_count`` / ``mini_batch_error_threshold``. So:

* a partition that cannot be read or scored (or whose file cannot be written) gets no row, and is logged with
  its reason; :func:`score_mini_batch` keeps its "error" row for callers that want it (the local backend);
* a model that fails inside a good partition is not a failed item: its windows are "error" rows in the
  prediction file and the partition's row says "partial" with the model's reason in ``failure_detail``;
* an item that is not a ``.parquet`` file (the run manifest ``data/<run>/manifest.json``, which the v2 job's
  input folder also holds) is not scored and gets a "skipped" row, so it never counts as a failure.

Azure ML uploads this folder alone, so the sibling modules are imported as top-level modules there and as the
``scoring_job`` package in the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

try:
    from . import engine
    from .change import model_features
    from .contract import CONTEXT_COLUMN, PARTITION_SUFFIX, PREDICTION_SCHEMA, RESULT_COLUMNS, WINDOW_COLUMNS
    from .features import TIME_FEATURES
    from .pack import ModelPack, load_pack
except ImportError:  # the Azure ML code snapshot: this folder is the working directory, not a package
    import engine
    from change import model_features
    from contract import CONTEXT_COLUMN, PARTITION_SUFFIX, PREDICTION_SCHEMA, RESULT_COLUMNS, WINDOW_COLUMNS
    from features import TIME_FEATURES
    from pack import ModelPack, load_pack

log = logging.getLogger("fleetscore.score")


PACK: ModelPack | None = None
OUTPUT: Path | None = None
RUN_ID: str = ""
DTYPE: str = "float64"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="score.py", allow_abbrev=False, add_help=False)
    parser.add_argument("--model_pack", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--model_pack_sha256", default=None)
    parser.add_argument("--run_id", default="")
    parser.add_argument("--dtype", default="float64", choices=engine.DTYPES)
    args, _platform_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


def init(argv: list[str] | None = None) -> None:
    """Parse the arguments (from ``argv`` or ``sys.argv``) and load the model pack once for this process."""
    global PACK, OUTPUT, RUN_ID, DTYPE
    args = parse_args(argv)
    pack = load_pack(args.model_pack, args.model_pack_sha256)
    engine.prepare(pack)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    PACK, OUTPUT, RUN_ID, DTYPE = pack, out, args.run_id, args.dtype
    log.info("score.init: pack %s (%d models, manifest SHA-256 %s%s) from %s, output %s, run %s, %s", pack.version,
             len(pack), pack.manifest_sha256, "" if args.model_pack_sha256 else ", not pinned", args.model_pack, out,
             RUN_ID, DTYPE)


def _string(values: Any) -> pa.Array:
    arr = pa.array(values, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.cast(pa.string())


def to_arrow(pred: pd.DataFrame) -> pa.Table:
    """The engine's prediction frame as a table of exactly :data:`PREDICTION_SCHEMA` (no pandas metadata)."""
    cols = []
    for field in PREDICTION_SCHEMA:
        s = pred[field.name]
        if pa.types.is_string(field.type):
            arr = _string(s)
        elif pa.types.is_timestamp(field.type):
            arr = pa.array(s).cast(field.type)
        else:
            arr = pa.array(s.to_numpy(), type=field.type)
        cols.append(arr)
    return pa.Table.from_arrays(cols, schema=PREDICTION_SCHEMA)


TEMP_SUFFIX = ".tmp"
"""A prediction file being written is ``.<name>.<random>.tmp`` in the output folder until it is renamed."""


def text_columns(table: pa.Table) -> list[str]:
    """The string (or dictionary) columns: the ones Parquet's dictionary encoding pays for (on float columns it
    costs most of the write and makes the file larger)."""
    return [f.name for f in table.schema
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type)]


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a temp file in the same folder and os.replace (readers never see half)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True, use_dictionary=text_columns(table))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(output: Path) -> int:
    """Delete the temp files a killed writer left in ``output`` (:func:`write_atomic`'s); their count. Only for an
    owner of the whole output folder before it starts writers (a run retried by its lease holder)."""
    stale = [p for p in output.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def read_partition(path: str) -> pd.DataFrame:
    """A partition's window rows and their ``context`` flag (all false when the file has no such column); device and
    sensor stay dictionary-encoded (pandas Categorical)."""
    names = pq.read_schema(path).names
    columns = list(WINDOW_COLUMNS) + ([CONTEXT_COLUMN] if CONTEXT_COLUMN in names else [])
    table = pq.read_table(path, columns=columns, read_dictionary=["device", "sensor"])
    frame = table.to_pandas()
    frame[CONTEXT_COLUMN] = frame[CONTEXT_COLUMN].fillna(False).astype(bool) if CONTEXT_COLUMN in names else False
    for k in ("device", "sensor"):
        if not isinstance(frame[k].dtype, pd.CategoricalDtype):
            frame[k] = frame[k].astype("category")
        frame[k] = frame[k].cat.rename_categories(lambda v: str(v))
    return frame


def partition_features(windows: pd.DataFrame, pack: ModelPack) -> pd.DataFrame:
    """The features ``pack`` scores, of a partition's windows: computed over all rows (context rows give the first
    windows their baseline and announced changes), then the context rows dropped. Only the time features the pack
    names are computed, and the change from the recent past only for the rows scored."""
    feats = model_features(windows, pack.features, pack.window_minutes * 60_000, announce=pack.announce_sensors,
                           context=pack.context_windows, settle=pack.settle_windows,
                           calendar=[f for f in TIME_FEATURES if f in pack.features],
                           rows=~windows[CONTEXT_COLUMN].to_numpy(dtype=bool))
    return feats.reset_index(drop=True)


def score_partition(path: str, pack: ModelPack, output: Path, run_id: str = "", dtype: str = "float64") -> dict:
    """Score one partition file into ``output / basename(path)``; the result row (never raises)."""
    name = os.path.basename(os.fspath(path))
    row: dict[str, Any] = {"partition": name, "rows": 0, "models": 0, "anomalies": 0, "windows_no_model": 0,
                           "failures": 0, "failure_detail": "{}", "status": "error", "error": None}
    try:
        feats = partition_features(read_partition(os.fspath(path)), pack)
        pred, stats = engine.score(feats, pack, run_id=run_id, dtype=dtype)
        write_atomic(to_arrow(pred), output / name)
        failures = stats.failures
        errors = int((pred["status"] == "error").sum())
        row.update(rows=len(pred), models=stats.models, anomalies=int(pred["is_anomaly"].sum()),
                   windows_no_model=stats.no_model_windows, failures=len(failures),
                   failure_detail=json.dumps({f"{d}/{s}": r for (d, s), r in sorted(failures.items())},
                                             sort_keys=True),
                   status="partial" if failures or errors else "ok")
        if errors and not failures:
            row["error"] = f"{errors} windows with non-finite features or decision values"
    except Exception as exc:  # noqa: BLE001 - one bad partition is a result row, never a crash of the batch
        row["error"] = f"{type(exc).__name__}: {exc}"
        log.exception("score.run: partition %s failed", name)
    return row


def skipped_row(path: str) -> dict:
    """The result row of a mini-batch item that is not a partition file (never scored, never a failure)."""
    return {"partition": os.path.basename(os.fspath(path)), "rows": 0, "models": 0, "anomalies": 0,
            "windows_no_model": 0, "failures": 0, "failure_detail": "{}", "status": "skipped",
            "error": "not a .parquet partition"}


def score_mini_batch(mini_batch: list[str]) -> pd.DataFrame:
    """Every item's result row (see :data:`RESULT_COLUMNS`), failed partitions ("error") included."""
    if PACK is None or OUTPUT is None:
        raise RuntimeError("score.init() has not been called in this process")
    rows = [score_partition(item, PACK, OUTPUT, RUN_ID, DTYPE) if is_partition(item) else skipped_row(item)
            for item in mini_batch]
    result = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    for k in ("rows", "models", "anomalies", "windows_no_model", "failures"):
        result[k] = result[k].astype(np.int64)
    result["error"] = pd.Series([r["error"] for r in rows], index=result.index, dtype=object)
    return result


def is_partition(path: str) -> bool:
    """A mini-batch item the job scores: a ``.parquet`` file (the v1 pipeline stages only those; v2 lists the
    whole ``data/<run>/`` folder)."""
    return os.fspath(path).endswith(PARTITION_SUFFIX)


def run(mini_batch: list[str]) -> pd.DataFrame:
    """Score the mini-batch; a row per partition scored or item skipped, none for a failed partition (the
    runners count the missing rows as failed items; see the module docstring)."""
    result = score_mini_batch(mini_batch)
    failed = result["status"] == "error"
    for row in result[failed].itertuples():
        log.error("score.run: partition %s failed, no result row: %s", row.partition, row.error)
    log.info("score.run: %d items, %d rows, %d anomalies, statuses %s", len(result), int(result["rows"].sum()),
             int(result["anomalies"].sum()), dict(result["status"].value_counts()))
    return result[~failed].reset_index(drop=True)
