"""Every container and blob key of the store: the one place that spells them.

Keys are `<container>/<path>`; the scoring job's containers come from :mod:`scoring_job.contract`.
"""

from __future__ import annotations

from fleetscore.clock import to_datetime
from scoring_job.contract import DATA_CONTAINER, MODELS_CONTAINER, PREDICTIONS_CONTAINER

DATA = DATA_CONTAINER
MODELS = MODELS_CONTAINER
PREDICTIONS = PREDICTIONS_CONTAINER
ALERTS = "alerts"
"""Alert documents: `alerts/<yyyy>/<mm>/<dd>/<alert_id>.json`, dated by the episode's first window (UTC)."""
DEADLETTER = "deadletter"
"""Event batches the ingest function could not store: `deadletter/pending/…`, then `deadletter/replayed/…`."""
DEADLETTER_PENDING = f"{DEADLETTER}/pending/"
"""The list prefix of batches waiting for `fleetscore ingest --replay-deadletter`."""
DEADLETTER_REPLAYED = f"{DEADLETTER}/replayed/"

CURRENT_POINTER = f"{MODELS}/CURRENT"
"""The active model pack: its version and manifest SHA-256 (`fleetscore.training.read_active_pack` reads it)."""
PREDICTIONS_TRIGGER_PATH = f"{PREDICTIONS}/{{name}}"
"""The blob trigger's path pattern."""


def run_data_prefix(run_id: str) -> str:
    """`data/<run_id>`: the partitions of one run."""
    return f"{DATA}/{run_id}"


def partition_name(number: int) -> str:
    """`part-NNNNN.parquet`: the n-th partition of a run (its prediction file has the same name)."""
    return f"part-{number:05d}.parquet"


def partition_key(run_id: str, name: str) -> str:
    return f"{run_data_prefix(run_id)}/{name}"


def run_manifest_key(run_id: str) -> str:
    return f"{run_data_prefix(run_id)}/manifest.json"


def model_pack_prefix(version: str) -> str:
    """`models/<version>`: one model pack folder."""
    return f"{MODELS}/{version}"


def model_manifest_key(version: str) -> str:
    return f"{model_pack_prefix(version)}/manifest.json"


def predictions_prefix(run_id: str) -> str:
    """`predictions/<run_id>`: the prediction files of one run."""
    return f"{PREDICTIONS}/{run_id}"


def prediction_key(name: str) -> str:
    """The store key of a prediction blob: `predictions/<run>/part-…` given with or without the container."""
    name = name.strip().lstrip("/")
    return name if name.startswith(PREDICTIONS + "/") else f"{PREDICTIONS}/{name}"


def is_prediction_file(key: str) -> bool:
    """`predictions/<run>/part-NNNNN.parquet`-like: a visible `.parquet` name (not a writer's temp file)."""
    last = key.rsplit("/", 1)[-1]
    return last.endswith(".parquet") and not last.startswith(".")


def run_id_of(key: str) -> str | None:
    """`predictions/<run_id>/<file>` → run_id (None for a file directly under the container)."""
    parts = key.split("/")
    return parts[1] if len(parts) >= 3 and parts[1] else None


def alert_document_key(alert_id: str, first_window_end_ms: int) -> str:
    """`alerts/<yyyy>/<mm>/<dd>/<alert_id>.json`, dated by the episode's first window (UTC)."""
    day = to_datetime(first_window_end_ms)
    return f"{ALERTS}/{day:%Y/%m/%d}/{alert_id}.json"


def deadletter_key(written_ms: int, name: str) -> str:
    """`deadletter/pending/<yyyy>/<mm>/<dd>/<name>.json`: a dead-lettered batch, dated by when it was written (UTC)."""
    day = to_datetime(written_ms)
    return f"{DEADLETTER_PENDING}{day:%Y/%m/%d}/{name}.json"


def replayed_deadletter_key(pending_key: str) -> str:
    """Where a replayed batch goes: its pending key with `pending/` replaced by `replayed/`."""
    if not pending_key.startswith(DEADLETTER_PENDING):
        raise ValueError(f"not a pending dead-letter key: {pending_key!r}")
    return DEADLETTER_REPLAYED + pending_key[len(DEADLETTER_PENDING):]
