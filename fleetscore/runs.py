"""Scheduled runs: claim a slot once, export its closed windows as partitions, submit them for scoring.

A run is keyed by its schedule slot (`run_id` = the slot's UTC time). Claiming inserts the `runs` row,
so a double fire, a past-due catch-up or two instances give one run. The run scores the windows that
are closed (end ≤ slot − LATE_ARRIVAL_SECONDS) and newer than the scoring watermark; it writes them to
`data/<run_id>/part-NNNNN.parquet` (whole devices per partition, at most PARTITION_MODELS pairs) plus
`data/<run_id>/manifest.json`, then hands them to the backend. Completion — status succeeded/partial
and the watermark advance — happens when the index has seen every partition's prediction file.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import db
from fleetscore.blobstore import BlobNotFound, BlobStore
from fleetscore.schedule import run_id_for_slot
from fleetscore.windows import closed_range

log = logging.getLogger(__name__)

RETRYABLE = ("failed", "partial")
STALE_RUN_MS = 6 * 3_600_000
"""A run still claimed/submitted/running this long after its claim is presumed dead (its worker was
killed): `--retry` may take it over."""
CURRENT_POINTER = "models/CURRENT"
PARTITION_SCHEMA = pa.schema([
    ("device", pa.string()), ("sensor", pa.string()), ("window_end", pa.timestamp("ms", tz="UTC")),
    ("n", pa.int64()), ("sum", pa.float64()), ("sumsq", pa.float64()), ("min", pa.float64()),
    ("max", pa.float64()),
])


class RunError(RuntimeError):
    """A run could not be prepared or submitted; recorded on the run row."""


@dataclass(frozen=True)
class Claim:
    """A claimed run: its slot, attempt and window range (from exclusive, until inclusive; epoch ms)."""

    run_id: str
    slot_ms: int
    attempt: int
    window_from: int
    window_until: int


@dataclass
class Partition:
    name: str
    pairs: int
    windows: int


@dataclass
class RunManifest:
    run_id: str
    slot: int
    window_from: int
    window_until: int
    model_version: str
    window_minutes: int
    partitions: list[Partition] = field(default_factory=list)
    created_at: int = 0

    def to_json(self) -> bytes:
        doc = {**self.__dict__, "partitions": [p.__dict__ for p in self.partitions]}
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RunManifest:
        doc = json.loads(data)
        return cls(**{**doc, "partitions": [Partition(**p) for p in doc["partitions"]]})

    @property
    def pairs(self) -> int:
        return sum(p.pairs for p in self.partitions)

    @property
    def windows(self) -> int:
        return sum(p.windows for p in self.partitions)


def manifest_key(run_id: str) -> str:
    return f"data/{run_id}/manifest.json"


def partition_key(run_id: str, name: str) -> str:
    return f"data/{run_id}/{name}"


def read_manifest(store: BlobStore, run_id: str) -> RunManifest | None:
    try:
        return RunManifest.from_json(store.get(manifest_key(run_id)))
    except BlobNotFound:
        return None


def current_model_version(store: BlobStore) -> str | None:
    """The model-pack version `models/CURRENT` points at, or None before the first `train --activate`."""
    try:
        return store.get(CURRENT_POINTER).decode().strip() or None
    except BlobNotFound:
        return None


# --------------------------------------------------------------------------------------------- claim
def claim_run(engine: Engine, slot_ms: int, *, window_ms: int, late_ms: int, max_lookback_ms: int,
              trigger: str, backend: str, retry: bool = False) -> Claim | None:
    """Claim the run of `slot_ms`, or None when it is already claimed.

    The claim is the INSERT of the run's row (its primary key is the run id), so of any number of
    concurrent claimers exactly one wins. With `retry`, a failed or partial run of the slot — or one left
    unfinished for STALE_RUN_MS by a killed worker — is claimed again (attempt + 1) over the window range
    it had, so its outputs are rewritten identically.
    """
    run_id = run_id_for_slot(slot_ms)
    r = db.runs
    now = db.now_ms()
    with engine.begin() as conn:
        watermark = db.read_watermark(conn)
    window_from, window_until = closed_range(slot_ms, late_ms, watermark, window_ms, max_lookback_ms)
    window_from = min(window_from, window_until)
    try:
        with engine.begin() as conn:
            conn.execute(r.insert().values(
                run_id=run_id, slot=slot_ms, attempt=1, status="claimed", trigger=trigger, backend=backend,
                window_from=window_from, window_until=window_until, claimed_at=now))
        return Claim(run_id, slot_ms, 1, window_from, window_until)
    except sa.exc.IntegrityError:
        pass
    if not retry:
        return None
    with engine.begin() as conn:
        row = conn.execute(sa.select(r.c.status, r.c.attempt, r.c.window_from, r.c.window_until, r.c.claimed_at)
                           .where(r.c.run_id == run_id)).first()
        stale = row is not None and row.status not in db.RUN_TERMINAL and row.claimed_at < now - STALE_RUN_MS
        if row is None or (row.status not in RETRYABLE and not stale):
            return None
        won = conn.execute(r.update().where(r.c.run_id == run_id, r.c.status == row.status,
                                            r.c.attempt == row.attempt)
                           .values(status="claimed", attempt=row.attempt + 1, trigger=trigger, backend=backend,
                                   claimed_at=now, submitted_at=None, finished_at=None, error=None,
                                   failures=None, failure_detail=None, windows_no_model=None)).rowcount
    if won != 1:
        return None
    return Claim(run_id, slot_ms, row.attempt + 1, row.window_from, row.window_until)


def update_run(engine: Engine, run_id: str, **values) -> None:
    with engine.begin() as conn:
        conn.execute(db.runs.update().where(db.runs.c.run_id == run_id).values(**values))


def fail_run(engine: Engine, run_id: str, error: str) -> None:
    update_run(engine, run_id, status="failed", error=error[:4000], finished_at=db.now_ms())


# -------------------------------------------------------------------------------------------- export
def device_partitions(rows: Iterable[tuple], partition_models: int) -> Iterator[list[tuple]]:
    """Cut window rows sorted by (device, sensor, window_end) into partitions of whole devices holding at
    most `partition_models` device+sensor pairs (more only when one device alone has more)."""
    part: list[tuple] = []
    pairs = 0
    for _device, group in groupby(rows, key=itemgetter(0)):
        device_rows = list(group)
        device_pairs = len({r[1] for r in device_rows})
        if part and pairs + device_pairs > partition_models:
            yield part
            part, pairs = [], 0
        part.extend(device_rows)
        pairs += device_pairs
    if part:
        yield part


def partition_bytes(rows: list[tuple]) -> bytes:
    """One partition's window rows (PARTITION_SCHEMA order, window_end epoch ms) as Parquet; equal rows
    give equal bytes."""
    device, sensor, end, n, total, sumsq, lo, hi = zip(*rows, strict=True)
    numeric = [np.array(col, dtype=np.float64) for col in (total, sumsq, lo, hi)]
    table = pa.Table.from_arrays(
        [pa.array(device, pa.string()), pa.array(sensor, pa.string()),
         pa.array(np.array(end, dtype=np.int64)).cast(PARTITION_SCHEMA.field("window_end").type),
         pa.array(np.array(n, dtype=np.int64)), *(pa.array(col) for col in numeric)],
        schema=PARTITION_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def export_run(engine: Engine, store: BlobStore, claim: Claim, *, model_version: str, window_ms: int,
               partition_models: int, progress: Callable[[int, int], None] | None = None,
               on_partition: Callable[[str], None] | None = None) -> RunManifest:
    """Write the claim's windows to `data/<run_id>/part-NNNNN.parquet` and the run manifest.

    One ordered query streamed in chunks; memory is bounded by one partition. `on_partition(key)` is
    called as each partition is written (the local backend starts scoring it at once).
    """
    w = db.windows
    query = (sa.select(w.c.device, w.c.sensor, w.c.window_end, w.c.n, w.c.sum, w.c.sumsq, w.c.min, w.c.max)
             .where(w.c.window_end > claim.window_from, w.c.window_end <= claim.window_until)
             .order_by(w.c.device, w.c.sensor, w.c.window_end))
    manifest = RunManifest(run_id=claim.run_id, slot=claim.slot_ms, window_from=claim.window_from,
                           window_until=claim.window_until, model_version=model_version,
                           window_minutes=window_ms // 60_000, created_at=db.now_ms())
    with engine.connect() as conn:
        for number, rows in enumerate(device_partitions(db.iter_tuples(conn, query), partition_models)):
            name = f"part-{number:05d}.parquet"
            store.put(partition_key(claim.run_id, name), partition_bytes(rows))
            if on_partition:
                on_partition(partition_key(claim.run_id, name))
            manifest.partitions.append(Partition(name=name, pairs=len({(r[0], r[1]) for r in rows}),
                                                 windows=len(rows)))
            if progress:
                progress(number + 1, 0)
    store.put(manifest_key(claim.run_id), manifest.to_json())
    return manifest


# ------------------------------------------------------------------------------------------ complete
def complete_empty_run(engine: Engine, claim: Claim) -> None:
    """A run with nothing to score is done at once; the watermark still advances to its range end."""
    now = db.now_ms()
    with engine.begin() as conn:
        conn.execute(db.runs.update().where(db.runs.c.run_id == claim.run_id).values(
            status="succeeded", partitions=0, models=0, windows=0, windows_no_model=0, failures=0,
            finished_at=now))
        db.advance_watermark(conn, claim.window_until, now)


def mark_unscored_partitions(engine: Engine, run_id: str, errors: dict[str, str], *, all_failed: bool,
                             skip_if: tuple[str, ...] = db.RUN_TERMINAL) -> None:
    """Partitions the backend could not score write no prediction file, so the index cannot complete the
    run: record them and end the run as partial (or failed when nothing was scored). The watermark is
    left alone, so the next run scores those windows again."""
    r = db.runs
    detail = json.dumps({f"partition/{name}": err for name, err in errors.items()})[:4000]
    with engine.begin() as conn:
        conn.execute(r.update().where(r.c.run_id == run_id, r.c.status.not_in(skip_if)).values(
            status="failed" if all_failed else "partial", error=f"{len(errors)} partition(s) not scored",
            failure_detail=detail, finished_at=db.now_ms()))


def list_runs(engine: Engine, limit: int = 20) -> pd.DataFrame:
    r = db.runs
    with engine.connect() as conn:
        return db.read_frame(conn, sa.select(r).order_by(r.c.slot.desc()).limit(limit))


@dataclass
class RunOutcome:
    """What `start_run` did: `claimed` False means another invocation owns the slot."""

    run_id: str
    claimed: bool
    status: str = ""
    manifest: RunManifest | None = None
    backend_run_id: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def start_run(services, slot_ms: int, *, trigger: str, retry: bool = False, backend=None,
              progress: Callable[[str, int, int], None] | None = None) -> RunOutcome:
    """Claim, export and submit the run of one slot. Never raises for the run's own failures: they are
    recorded on its row (status failed, error) and returned."""
    from fleetscore.backends import SubmitRequest, backend_for

    settings = services.settings
    engine, store = services.engine, services.store
    claim = claim_run(engine, slot_ms, window_ms=settings.window_ms, late_ms=settings.late_arrival_seconds * 1000,
                      max_lookback_ms=int(settings.max_lookback_hours * 3_600_000), trigger=trigger,
                      backend=settings.scoring_backend, retry=retry)
    run_id = run_id_for_slot(slot_ms)
    if claim is None:
        log.info("run %s is already claimed; nothing to do", run_id)
        return RunOutcome(run_id, claimed=False)
    outcome = RunOutcome(run_id, claimed=True)
    feed = None
    try:
        version = current_model_version(store)
        if version is None:
            raise RunError("no active model pack: run `fleetscore train --activate` first")
        request = SubmitRequest.for_run(run_id, slot_ms, version)
        backend = backend or backend_for(services, progress=progress)
        # the local backend can score partitions while they are being exported
        feed = backend.open_feed(request) if hasattr(backend, "open_feed") else None
        t0 = time.perf_counter()
        manifest = export_run(engine, store, claim, model_version=version, window_ms=settings.window_ms,
                              partition_models=settings.partition_models,
                              progress=(lambda d, t: progress("export", d, t)) if progress else None,
                              on_partition=(lambda key: feed.add(store.local_path(key))) if feed else None)
        outcome.manifest = manifest
        outcome.timings["export"] = round(time.perf_counter() - t0, 3)
        update_run(engine, run_id, model_version=version, partitions=len(manifest.partitions),
                   models=manifest.pairs, windows=manifest.windows, timings=json.dumps(outcome.timings))
        if not manifest.partitions:
            if feed is not None:
                feed.cancel()
            complete_empty_run(engine, claim)
            outcome.status = "succeeded"
            return outcome
        t0 = time.perf_counter()
        update_run(engine, run_id, status="submitted", submitted_at=db.now_ms())
        outcome.backend_run_id = backend.submit(request)
        outcome.timings["submit"] = round(time.perf_counter() - t0, 3)
        update_run(engine, run_id, backend_run_id=outcome.backend_run_id, timings=json.dumps(outcome.timings))
        after = getattr(backend, "after_submit", None)
        if after is not None:  # the local backend scored synchronously: index what it wrote
            outcome.timings.update(after(run_id))
            update_run(engine, run_id, timings=json.dumps(outcome.timings))
        with engine.connect() as conn:
            outcome.status = conn.execute(sa.select(db.runs.c.status).where(db.runs.c.run_id == run_id)).scalar()
        return outcome
    except Exception as exc:  # recorded, never lost: the run row says what happened
        if feed is not None:  # a pool still scoring partitions of a failed run is stopped
            feed.cancel()
        log.exception("run %s failed", run_id)
        outcome.status, outcome.error = "failed", f"{type(exc).__name__}: {exc}"
        try:
            fail_run(engine, run_id, outcome.error)
        except Exception:  # the database itself is down: the log line above is the record
            log.exception("could not record the failure of run %s", run_id)
        return outcome
