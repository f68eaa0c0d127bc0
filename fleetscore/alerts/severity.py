"""Alert severity: an anomaly score against its model's training-score quantiles.

The quantiles come from the model pack manifest (``models/<version>/manifest.json``, read as JSON through
:func:`scoring_job.pack.manifest_training_table`, cached per version); this module is the only Core reader
of them. Scores are the negated decision function (higher is more anomalous, anomalous above 0).

- ``critical``: score ≥ train max + 2 · (q99 − q50)
- ``high``:     score > train max
- ``medium``:   score > q99
- ``low``:      otherwise (anomalous, but within the training tail)

An unknown pack, pair or quantile gives ``medium``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd

from fleetscore.training import read_pack_manifest
from scoring_job.pack import QUANTILES, manifest_training_table

log = logging.getLogger(__name__)

SEVERITIES = ("low", "medium", "high", "critical")
"""Severity words, least severe first."""
SEVERITY_RANK = {name: i for i, name in enumerate(SEVERITIES)}
UNKNOWN_SEVERITY = "medium"

Quantiles = Mapping[str, float | None]
"""One model's training-score quantiles: {"q50", "q90", "q95", "q99", "max"} → score (None when unknown)."""
QuantileTable = dict[tuple[str, str], dict[str, float | None]]
"""{(device, sensor): quantiles} of one model pack."""
SeverityOf = Callable[[str | None, str, str, float], str]
"""severity_of(model_version, device, sensor, score) -> severity word."""


def severity(score: float, quantiles: Quantiles | None) -> str:
    """Severity of an anomaly score against a model's training-score quantiles (see the module doc)."""
    if quantiles is None:
        return UNKNOWN_SEVERITY
    q50, q99, top = quantiles.get("q50"), quantiles.get("q99"), quantiles.get("max")
    if any(v is None or not math.isfinite(v) for v in (q50, q99, top)) or not math.isfinite(score):
        return UNKNOWN_SEVERITY
    if score >= top + 2.0 * max(q99 - q50, 0.0):
        return "critical"
    if score > top:
        return "high"
    if score > q99:
        return "medium"
    return "low"


def worse(a: str | None, b: str) -> str:
    """The more severe of two severity words (`a` None: `b`)."""
    if a is None:
        return b
    return a if SEVERITY_RANK.get(a, -1) >= SEVERITY_RANK.get(b, -1) else b


def quantiles_from_manifest(manifest: Any) -> QuantileTable:
    """{(device, sensor): {"q50", "q90", "q95", "q99", "max"}} (None where unknown) from a model-pack manifest;
    PackError when it is malformed."""
    table = manifest_training_table(manifest)
    names = [name for name, _ in QUANTILES]
    values = table[[f"score_{name}" for name in names]].to_numpy()
    rows = [[None if math.isnan(v) else v for v in row] for row in values.tolist()]
    return {key: dict(zip(names, row, strict=True))
            for key, row in zip(zip(table["device"], table["sensor"], strict=True), rows, strict=True)}


_TABLES: OrderedDict[tuple[str, str], QuantileTable] = OrderedDict()
"""(repr(store), version) → that pack's quantiles, least recently used first."""
_TABLES_LOCK = threading.Lock()
_TABLES_MAX = 8


def pack_quantiles(store: Any, version: str) -> QuantileTable | None:
    """The training-score quantiles of pack `version` (manifest JSON only; cached per store and version;
    None when the manifest cannot be read — not cached, so a later file tries again)."""
    cache_key = (repr(store), version)
    with _TABLES_LOCK:
        if cache_key in _TABLES:
            _TABLES.move_to_end(cache_key)
            return _TABLES[cache_key]
    try:
        table = quantiles_from_manifest(read_pack_manifest(store, version))
    except Exception as exc:  # missing or unreadable pack: severity falls back to "medium"
        log.warning("model pack %s: no readable manifest (%s); severity of its alerts is %s",
                    version, type(exc).__name__, UNKNOWN_SEVERITY)
        return None
    with _TABLES_LOCK:
        _TABLES[cache_key] = table
        while len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    return table


def severity_lookup(store: Any, versions: Iterable[str | None]) -> SeverityOf:
    """A `severity_of` over the packs of `versions` (manifests are read now, before any transaction)."""
    tables = {v: pack_quantiles(store, v) for v in {str(v) for v in versions if v is not None and not pd.isna(v)}}

    def severity_of(model_version: str | None, device: str, sensor: str, score: float) -> str:
        table = tables.get(model_version) if model_version is not None else None
        return severity(score, table.get((device, sensor)) if table is not None else None)

    return severity_of
