"""Blob trigger (Event Grid source): each prediction file becomes indexed anomalies, alerts and run completion."""

from __future__ import annotations

import logging

import azure.functions as func

from fleetscore.context import get_services
from fleetscore.db import is_transient
from fleetscore.predictions.index import index_prediction_file
from fleetscore.storage.paths import PREDICTIONS_TRIGGER_PATH

bp = func.Blueprint()
log = logging.getLogger("fleetscore.functions.predictions")


def blob_etag(blob: func.InputStream) -> str | None:
    """The ETag from the trigger's blob properties (key spelling varies between extension versions)."""
    props = blob.blob_properties or {}
    for key, value in props.items():
        if str(key).lower() == "etag" and value:
            return str(value)
    return None


@bp.function_name("index_predictions")
@bp.blob_trigger(arg_name="blob", path=PREDICTIONS_TRIGGER_PATH, connection="AzureWebJobsStorage",
                 source=func.BlobSource.EVENT_GRID)
def index_predictions(blob: func.InputStream) -> None:
    services = get_services()
    try:
        result = index_prediction_file(services.engine, services.store, services.settings, blob.name or "",
                                       data=blob.read(), etag=blob_etag(blob))
    except Exception as exc:
        if is_transient(exc):
            raise  # the host retries the blob (then poisons it after poisonBlobThreshold tries)
        log.exception("index_predictions %s failed", blob.name)
        return
    log.info("index_predictions %s: %s, %d rows, %d anomalies, %d alert(s) changed%s", result.name, result.status,
             result.rows, result.anomalies, result.alerts_changed,
             f", error: {result.error}" if result.error else "")
