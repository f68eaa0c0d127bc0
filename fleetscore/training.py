"""Train the fleet from the windows in SQL and publish the model pack to the `models` store.

`models/<version>/` holds the pack (manifest + array files, see scoring_job/pack.py); `models/CURRENT`
is the active pack pointer: `{"version": ..., "manifest_sha256": ...}`, the version runs use and the SHA-256 of its
manifest.json taken when it was activated, so that any later edit of the active pack is refused (the manifest holds
every other file's SHA-256). A pointer written before pinning holds the version alone on one line: it is still
read, and a run then pins the manifest as it reads it at its start. Versions are UTC timestamps
(`v20261123T100500Z`), so they sort by age.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import clock, db
from fleetscore.storage.base import BlobNotFound, BlobStore
from fleetscore.storage.paths import CURRENT_POINTER, model_manifest_key, model_pack_prefix
from scoring_job import change
from scoring_job.features import window_features
from scoring_job.pack import manifest_sha256, verify_manifest, write_pack
from scoring_job.thresholds import FALSE_RATE
from scoring_job.train import FitResult, fit_fleet

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class TrainResult:
    version: str
    models: int
    skipped: dict[tuple[str, str], str]
    windows: int
    activated: bool
    sparse: dict[tuple[str, str], float] = field(default_factory=dict)
    """The sparse models' window coverage (:func:`sparse_models`)."""


SPARSE_COVERAGE = 0.5
"""A model trained on fewer than this share of the windows of its training range is *sparse*: its sensor reports
less often than once per window (or was silent for long spells). The alert rules count ``ALERT_PERSISTENCE`` k/n in
windows of time and a window without a reading as a normal one, so such a pair alerts only through a strong window
or two high windows in a row (measured on the varied simulator with readings every 10-30 minutes, tuning seeds
101-102: recall 0.035 with 5-minute windows, 0.283 with 15-minute ones)."""


def window_coverage(info: Mapping[str, Any], window_ms: int) -> float:
    """The share of the windows from a model's first to its last training window (``info``: its training record,
    ``from``/``until`` window ends, ``size`` windows; :func:`scoring_job.pack.training_info`) it was trained on,
    0..1 (window ends as Timestamps or epoch ms); 1.0 when the record lacks them."""
    size, first, last = info.get("size"), info.get("from"), info.get("until")
    if not size or first is None or last is None:
        return 1.0
    span = (clock.to_ms(last) - clock.to_ms(first)) // window_ms + 1
    return min(1.0, int(size) / max(int(span), 1))


def sparse_models(training: Mapping[tuple[str, str], Mapping[str, Any]],
                  window_ms: int) -> dict[tuple[str, str], float]:
    """{pair: window coverage} of the models whose coverage (:func:`window_coverage`) is below
    :data:`SPARSE_COVERAGE`, in pair order."""
    coverage = {key: window_coverage(info, window_ms) for key, info in sorted(training.items())}
    return {key: c for key, c in coverage.items() if c < SPARSE_COVERAGE}


TRAIN_CHUNK_PAIRS = 2_000
"""Pairs (of whole devices) whose windows `train` loads and fits together at most: its memory is one chunk's, not
the fleet's (2 days of 5-minute windows take ~200 KB a pair while fitted: ~400 MB a chunk)."""


def _in_range(query: sa.Select, from_ms: int | None, until_ms: int | None) -> sa.Select:
    w = db.windows
    if from_ms is not None:
        query = query.where(w.c.window_end > from_ms)
    if until_ms is not None:
        query = query.where(w.c.window_end <= until_ms)
    return query


def load_windows(engine: Engine, from_ms: int | None = None, until_ms: int | None = None,
                 devices: tuple[str, str] | None = None) -> pd.DataFrame:
    """Window rows with window_end in (from, until] (either bound optional), window_end as UTC datetimes; with
    `devices` (first, last), only the devices between them (inclusive, in the database's order)."""
    w = db.windows
    query = _in_range(sa.select(w.c.device, w.c.sensor, w.c.window_end, w.c.n, w.c.sum, w.c.sumsq, w.c.min,
                                w.c.max), from_ms, until_ms)
    if devices is not None:
        query = query.where(w.c.device >= devices[0], w.c.device <= devices[1])
    with engine.connect() as conn:
        frame = db.read_frame(conn, query.order_by(w.c.device, w.c.sensor, w.c.window_end))
    frame["window_end"] = pd.to_datetime(frame["window_end"].astype(np.int64), unit="ms", utc=True)
    return frame


def device_chunks(engine: Engine, from_ms: int | None, until_ms: int | None,
                  max_pairs: int = TRAIN_CHUNK_PAIRS) -> list[tuple[str, str, int]]:
    """The devices with windows in the range, in the database's order, as consecutive groups of whole devices of at
    most `max_pairs` pairs (more only when one device alone has more): (first device, last device, pairs) each. A
    group is a range, so loading it needs two parameters however many devices it holds (SQL Server allows 2,100)."""
    w = db.windows
    query = _in_range(sa.select(w.c.device, sa.func.count(sa.distinct(w.c.sensor))), from_ms, until_ms)
    with engine.connect() as conn:
        counts = conn.execute(query.group_by(w.c.device).order_by(w.c.device)).all()
    chunks: list[tuple[str, str, int]] = []
    for device, pairs in counts:
        if chunks and chunks[-1][2] + pairs <= max_pairs:
            chunks[-1] = (chunks[-1][0], device, chunks[-1][2] + pairs)
        else:
            chunks.append((device, device, int(pairs)))
    return chunks


def new_version(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("v%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class ActivePack:
    """What `models/CURRENT` points at: a pack version and the SHA-256 of its manifest.json (64 hex digits) pinned
    when it was activated; None for a pointer written before pinning (the version alone)."""

    version: str
    manifest_sha256: str | None


def publish_pack(store: BlobStore, folder: Path, version: str, *, activate: bool) -> None:
    """Upload a pack folder to `models/<version>/`; with `activate`, point `models/CURRENT` at it (written last, so
    a run never sees a half-uploaded pack), pinning the manifest as uploaded."""
    store.upload_dir(folder, model_pack_prefix(version))
    if activate:
        activate_pack(store, version)


def activate_pack(store: BlobStore, version: str) -> ActivePack:
    """Point `models/CURRENT` at pack `version`, pinned to the SHA-256 of its manifest.json as stored now; the
    manifest is checked first (PackError, a ValueError, for one `load_pack` would refuse)."""
    raw = store.get(model_manifest_key(version))
    verify_manifest(raw)
    active = ActivePack(version, manifest_sha256(raw))
    pointer = {"version": active.version, "manifest_sha256": active.manifest_sha256}
    store.put(CURRENT_POINTER, (json.dumps(pointer, sort_keys=True) + "\n").encode())
    return active


def read_active_pack(store: BlobStore) -> ActivePack | None:
    """`models/CURRENT` (None before the first activation); ValueError when it is neither the JSON pointer nor the
    one-line version of a pointer written before pinning."""
    try:
        text = store.get(CURRENT_POINTER).decode("utf-8").strip()
    except BlobNotFound:
        return None
    if not text:
        return None
    if not text.startswith("{"):  # written before pinning: the version alone
        return ActivePack(text, None)
    try:
        pointer = json.loads(text)
        version, digest = pointer["version"], pointer["manifest_sha256"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{CURRENT_POINTER} is not a pack pointer ({type(exc).__name__}: {exc})") from None
    if not (isinstance(version, str) and version and isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise ValueError(f"{CURRENT_POINTER} needs a version and a manifest_sha256 of 64 lowercase hex digits")
    return ActivePack(version, digest)


def verified_active_pack(store: BlobStore) -> tuple[ActivePack, dict]:
    """The active pack, pinned, and its manifest checked as `load_pack` checks it before opening any array file
    (the pinned SHA-256, the per-model table, every key a device/sensor id): what a run verifies where it starts.
    A pointer written before pinning is pinned to the manifest as read now (logged). Raises ValueError (PackError
    included) with the reason, LookupError when no pack is active or its manifest is missing."""
    active = read_active_pack(store)
    if active is None:
        raise LookupError("no active model pack: run `fleetscore train --activate` first")
    try:
        raw = store.get(model_manifest_key(active.version))
    except BlobNotFound:
        raise LookupError(f"{CURRENT_POINTER} names pack {active.version!r}, which has no manifest.json") from None
    manifest = verify_manifest(raw, active.manifest_sha256)
    if active.manifest_sha256 is None:
        active = ActivePack(active.version, manifest_sha256(raw))
        log.warning("%s names %s without a manifest SHA-256 (written before pinning): this run pins %s as read now; "
                    "`fleetscore train --activate` writes a pinned pointer", CURRENT_POINTER, active.version,
                    active.manifest_sha256)
    return active, manifest


def read_pack_manifest(store: BlobStore, version: str) -> dict:
    """The manifest JSON of model pack `version`, the document alone (no array file is read or verified):
    BlobNotFound when the pack is missing, ValueError when it is not JSON. Check it with
    `scoring_job.pack.manifest_training_table`."""
    return json.loads(store.get(model_manifest_key(version)))


def current_model_version(store: BlobStore) -> str | None:
    """The model-pack version `models/CURRENT` points at, or None before the first `train --activate`."""
    active = read_active_pack(store)
    return active.version if active else None


def train(engine: Engine, store: BlobStore, *, from_ms: int | None, until_ms: int | None, min_windows: int,
          algorithm: str, features: tuple[str, ...], window_minutes: int, activate: bool,
          params: dict | None = None, n_jobs: int = -1,
          progress: Callable[[int, int], None] | None = None, false_rate: float = FALSE_RATE,
          announce: tuple[str, ...] = change.ANNOUNCE_SENSORS) -> TrainResult:
    """Fit one model per (device, sensor) on its windows in the range and publish one pack version; each model's
    alert thresholds are calibrated on its training windows at ``false_rate`` per window (ALERT_FALSE_RATE). The
    windows are loaded and fitted in chunks of whole devices (:data:`TRAIN_CHUNK_PAIRS`); the pack is the same."""
    chunks = device_chunks(engine, from_ms, until_ms)
    if not chunks:
        raise ValueError("no windows in the training range: ingest readings first (fleetscore ingest)")
    total = sum(pairs for *_, pairs in chunks)
    fit = FitResult(models={}, skipped={}, training={}, algorithm=algorithm, features=tuple(features))
    windows, done = 0, 0
    for first, last, pairs in chunks:  # whole devices: a device's announce sensors are in its chunk
        feats = window_features(load_windows(engine, from_ms, until_ms, devices=(first, last)))
        windows += len(feats)
        part = fit_fleet(feats, algorithm=algorithm, params=params, feature_names=features, min_windows=min_windows,
                         n_jobs=n_jobs, false_rate=false_rate, window_ms=window_minutes * 60_000, announce=announce,
                         progress=None if progress is None else lambda d, _t, done=done: progress(done + d, total))
        fit.models.update(part.models)
        fit.skipped.update(part.skipped)
        fit.training.update(part.training)
        done += pairs
        if progress is not None:  # the chunk's skipped pairs count as done too
            progress(done, total)
    if not fit.models:
        raise ValueError(f"no pair has {min_windows} windows in the range; lower --min-windows")
    version = new_version()
    with tempfile.TemporaryDirectory(prefix="fleetscore-pack-") as tmp:
        folder = Path(tmp) / version
        write_pack(fit.models, folder, version=version, features=features, window_minutes=window_minutes,
                   training=fit.training, announce=announce)
        publish_pack(store, folder, version, activate=activate)
    return TrainResult(version=version, models=len(fit.models), skipped=dict(sorted(fit.skipped.items())),
                       windows=windows, activated=activate,
                       sparse=sparse_models(fit.training, window_minutes * 60_000))
