"""Dead-lettered batches: the raw events of a batch the store could not take, kept in blob storage and replayed.

The Event Hubs host checkpoints a batch once the function's retry policy is done with it, whether or not the
last try succeeded; a batch that still fails then is gone from the hub's point of view. So the ingest function
writes the batch's raw events to `deadletter/pending/<yyyy>/<mm>/<dd>/<name>.json`
(:func:`fleetscore.storage.paths.deadletter_key`) before it returns:

- on its final try (`retry_count == max_retry_count`) when the store failed transiently, and
- at once when the store failed with any other (non-transient) error, since a retry would fail the same way.

What is transient is :func:`fleetscore.db.is_transient`: SQLAlchemy `OperationalError` (connection refused or
lost, locks, timeouts, a read-only database), `DisconnectionError`, an invalidated connection, the pool's
`TimeoutError`, an `IntegrityError` (a concurrent writer's race on a key), and driver messages naming a
deadlock, a lock or a lost connection. Everything else (a bug, a `DataError`, a `ProgrammingError`) is not.

The blob is one JSON document, no pickle: `{"format": "fleetscore-deadletter/1", "source", "reason", "error",
"written_at", "events": [{"body_b64", "partition", "offset", "sequence_number", "enqueued_time_ms"}]}`; bodies
are base64 so the bytes the device sent come back exactly. `replay_deadletters` feeds each pending blob through
the same ingest (idempotent: a reading stored twice is stored once, and a dead letter keeps the identity of its
event's source, partition, sequence number and payload, so it is recorded once), then writes it under
`deadletter/replayed/` and deletes the pending one. A crash between those steps leaves the pending blob, whose
replay is then a no-op that finishes the move, so no batch is lost or counted twice.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from fleetscore import clock, db
from fleetscore.ingest.readings import RawEvent
from fleetscore.ingest.store import IngestResult, TransientIngestError, ingest_events
from fleetscore.storage import paths
from fleetscore.storage.base import BlobStore

log = logging.getLogger(__name__)
FORMAT = "fleetscore-deadletter/1"
TRANSIENT, FAILED = "retries_exhausted", "store_failed"
"""Reasons a batch is dead-lettered: transient errors outlasted the retry policy; a non-transient error."""


@dataclass(frozen=True)
class DeadLetterBatch:
    """One dead-lettered batch as stored: where it came from, why, and its raw events."""

    source: str
    reason: str
    error: str
    written_at: int
    """Epoch ms UTC."""
    events: tuple[RawEvent, ...]

    def to_json(self) -> bytes:
        """The blob's bytes (UTF-8 JSON, bodies base64)."""
        doc = {"format": FORMAT, "source": self.source, "reason": self.reason, "error": self.error,
               "written_at": self.written_at,
               "events": [{"body_b64": base64.b64encode(e.body).decode("ascii"), "partition": e.partition,
                           "offset": e.offset, "sequence_number": e.sequence_number,
                           "enqueued_time_ms": e.enqueued_time_ms} for e in self.events]}
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> DeadLetterBatch:
        """Parse a blob written by `to_json`; ValueError for anything else."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        events = tuple(RawEvent(body=base64.b64decode(e["body_b64"], validate=True), partition=e.get("partition"),
                                offset=e.get("offset"), sequence_number=e.get("sequence_number"),
                                enqueued_time_ms=e.get("enqueued_time_ms")) for e in doc["events"])
        return cls(source=str(doc["source"]), reason=str(doc["reason"]), error=str(doc.get("error", "")),
                   written_at=int(doc["written_at"]), events=events)

    def name(self) -> str:
        """A unique blob name: partition, first..last sequence number, and a random suffix."""
        seqs = [e.sequence_number for e in self.events if e.sequence_number is not None]
        span = f"{min(seqs)}-{max(seqs)}" if seqs else "na"
        part = next((e.partition for e in self.events if e.partition is not None), None) or "na"
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(part))[:32]
        return f"p{safe}-{span}-{uuid.uuid4().hex[:12]}"


def write_deadletter(store: BlobStore, events: Sequence[RawEvent], *, source: str, reason: str,
                     error: BaseException) -> str:
    """Write a batch's raw events to `deadletter/pending/…`; returns the key. Raises if the store fails."""
    batch = DeadLetterBatch(source=source, reason=reason, error=f"{type(error).__name__}: {error}"[:2000],
                            written_at=clock.now_ms(), events=tuple(events))
    key = paths.deadletter_key(batch.written_at, batch.name())
    store.put(key, batch.to_json(), overwrite=False)
    return key


@dataclass
class BatchOutcome:
    """What `ingest_or_dead_letter` did with one delivered batch."""

    result: IngestResult
    deadletter_key: str | None = None
    """Set when the batch went to blob storage instead of SQL."""


def ingest_or_dead_letter(get_engine: Callable[[], Engine], store: BlobStore, events: Sequence[RawEvent], *,
                          source: str, window_ms: int, final_try: bool) -> BatchOutcome:
    """Store a delivered batch, or keep it in blob storage when the store cannot take it.

    `get_engine` is called inside the guard, so a database that cannot be reached at first use counts like
    one that fails mid-batch. Raises `TransientIngestError` for a transient failure while tries remain (the
    host retries the batch); on the final try, or for a non-transient failure, writes the batch to
    `deadletter/pending/…` and returns (the host then checkpoints past it and nothing is lost). A failing
    blob write raises.
    """
    try:
        return BatchOutcome(ingest_events(get_engine(), events, source=source, window_ms=window_ms))
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, TransientIngestError) and exc.__cause__ else exc
        transient = isinstance(exc, TransientIngestError) or db.is_transient(exc)
        if transient and not final_try:
            if isinstance(exc, TransientIngestError):
                raise
            raise TransientIngestError(f"transient database error, batch will be redelivered: "
                                       f"{type(exc).__name__}") from exc
        reason, error = (TRANSIENT if transient else FAILED), cause
    key = write_deadletter(store, events, source=source, reason=reason, error=error)
    log.error("ingest: %d event(s) could not be stored (%s: %s); kept in %s for `fleetscore ingest "
              "--replay-deadletter`", len(events), reason, type(error).__name__, key)
    return BatchOutcome(IngestResult(received=len(events)), deadletter_key=key)


@dataclass
class ReplaySummary:
    """Totals of one `replay_deadletters` pass."""

    replayed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Pending key → error, for blobs left pending."""
    result: IngestResult = field(default_factory=IngestResult)


def replay_deadletters(engine: Engine, store: BlobStore, *, window_ms: int) -> ReplaySummary:
    """Ingest every pending dead-lettered batch, oldest first, and move each replayed one to `replayed/`.

    A batch that fails again stays pending (its error is reported); a transient database error stops the
    pass (the database is not there: the next batches would fail the same way) and is raised.
    """
    summary = ReplaySummary()
    for info in sorted(store.list(paths.DEADLETTER_PENDING), key=lambda b: b.name):
        try:
            data = store.get(info.name)
            batch = DeadLetterBatch.from_json(data)
            summary.result += ingest_events(engine, batch.events, source=batch.source, window_ms=window_ms)
        except TransientIngestError:
            raise
        except Exception as exc:
            if db.is_transient(exc):
                raise
            summary.failed[info.name] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        store.put(paths.replayed_deadletter_key(info.name), data)
        store.delete(info.name)
        summary.replayed.append(info.name)
    return summary
