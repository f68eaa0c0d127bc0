"""Event Hub triggers: one durable spool per hub (:mod:`fleetscore.host.spool`), one dispatcher per function.

`POST /events` appends one event body to its hub's spool and is answered only after the fsync. A dispatcher
reads its function's records in order, invokes the function with up to host.json `maxEventBatchSize`
`EventHubEvent`s (one per invocation for cardinality one), applies the retry policy, and checkpoints only
after the invocation returned (a crash redelivers the batch: at-least-once). When the retries are exhausted
it moves on as the Event Hubs host does and keeps nothing: a function that must not lose a batch keeps it
itself on its final try (`context.retry_context`), as the ingest function does (`deadletter/` in blob storage).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.meta import Datum

from fleetscore.clock import to_datetime
from fleetscore.host.bindings import HostFunction
from fleetscore.host.invocation import Invoker
from fleetscore.host.spool import Spool, SpoolRecord

log = logging.getLogger("fleetscore.host")


def hub_folder(hub: str) -> str:
    """The spool folder name of an event hub (characters unsafe in a path become `_`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", hub) or "_"


def dispatcher_thread(fn: HostFunction) -> str:
    """The name of the host thread that dispatches events to `fn`."""
    return f"eventhub:{fn.name}"


def event_hub_events(fn: HostFunction, records: list[SpoolRecord]) -> list[func.EventHubEvent]:
    """The `EventHubEvent`s of spool records, with the partition context the Event Hubs extension sets."""
    context = Datum(json.dumps({"EventHubName": fn.event_hub, "ConsumerGroup": fn.binding.get("consumerGroup"),
                                "FullyQualifiedNamespace": "localhost", "PartitionId": "0"}), "json")
    return [func.EventHubEvent(body=r.body, sequence_number=r.sequence_number, offset=str(r.offset),
                               enqueued_time=to_datetime(r.enqueued_ms), partition_key=None,
                               trigger_metadata={"PartitionContext": context})
            for r in records]


class EventHubs:
    """The Event Hub functions of a host: their spools (`spools[hub]`) and dispatch loops."""

    def __init__(self, functions: list[HostFunction], invoker: Invoker, stop: threading.Event, *,
                 max_batch: int) -> None:
        self.hubs: dict[str, list[HostFunction]] = {}
        for fn in functions:
            self.hubs.setdefault(fn.event_hub, []).append(fn)
        self.invoker = invoker
        self.max_batch = max_batch
        self._stop = stop
        self.spools: dict[str, Spool] = {}
        self.folder: Path | None = None

    def open(self, folder: Path, *, fsync: bool) -> None:
        """Open a spool per hub under `folder` (`<folder>/<hub>/`), its functions as consumers."""
        self.folder = folder
        for hub, fns in self.hubs.items():
            self.spools[hub] = Spool(folder / hub_folder(hub), [f.name for f in fns], fsync=fsync)

    def close(self) -> None:
        for spool in self.spools.values():
            spool.close()

    def post(self, body: bytes, hub: str | None, dead_threads: dict[str, str]) -> SpoolRecord:
        """Store one event durably for the functions of `hub` (the only hub when None). KeyError for an unknown
        hub; RuntimeError when a dispatcher of the hub is among `dead_threads`."""
        if hub is None:
            if len(self.spools) != 1:
                raise KeyError(f"name the event hub: POST /events/<hub> (have {sorted(self.spools)})")
            hub = next(iter(self.spools))
        if hub not in self.spools:
            raise KeyError(f"no Event Hub function listens to {hub!r} (have {sorted(self.spools)})")
        stopped = [fn for fn in self.hubs[hub] if dispatcher_thread(fn) in dead_threads]
        if stopped:
            raise RuntimeError(f"the dispatcher of {', '.join(fn.name for fn in stopped)} stopped on an error "
                               f"({dead_threads[dispatcher_thread(stopped[0])]}); restart the host")
        return self.spools[hub].append(body)

    def dispatch(self, fn: HostFunction) -> None:
        """Deliver `fn`'s events in order until the host stops (a host thread)."""
        spool = self.spools[fn.event_hub]
        while not self._stop.is_set():
            done = spool.checkpointed(fn.name)
            records = spool.read(done, self.max_batch)
            if not records:
                spool.wait(done, 0.5)
                continue
            if not self._deliver(fn, spool, records):
                return

    def _deliver(self, fn: HostFunction, spool: Spool, records: list[SpoolRecord]) -> bool:
        """Invoke `fn` for one read (one batch, or one invocation per event) and checkpoint each; False when
        the host stopped (what is not checkpointed is redelivered at the next start)."""
        units = [records] if fn.many else [[r] for r in records]
        for unit in units:
            if self._stop.is_set():
                return False

            def args(unit: list[SpoolRecord] = unit) -> dict:
                events = event_hub_events(fn, unit)
                return {fn.arg_name: events if fn.many else events[0]}

            outcome = self.invoker.invoke_with_retry(
                fn, args, reason=f"EventHub={fn.event_hub} {len(unit)} event(s) "
                                 f"{unit[0].sequence_number}..{unit[-1].sequence_number}")
            if outcome is None:
                return False  # stopping in a retry wait: not checkpointed
            if outcome is False:
                log.error("Functions.%s: retries exhausted for events %d..%d; checkpointing past them, as the "
                          "Event Hubs host does (the batch is not kept by the host)", fn.name,
                          unit[0].sequence_number, unit[-1].sequence_number)
            spool.checkpoint(fn.name, unit[-1].sequence_number)
        return True

    def health(self, fn: HostFunction) -> dict[str, Any]:
        """`fn`'s part of `/health`: hub, batch size, checkpoint and backlog."""
        doc: dict[str, Any] = {"event_hub": fn.event_hub, "max_event_batch_size": self.max_batch}
        spool = self.spools.get(fn.event_hub)
        if spool is not None:
            doc["checkpoint"] = spool.checkpointed(fn.name)
            doc["backlog"] = spool.backlog(fn.name)
        return doc

    def backlog(self) -> int:
        """Events not yet delivered, summed over hubs (per hub: its slowest function's backlog)."""
        return sum(max(spool.backlog(c) for c in spool.consumers) for spool in self.spools.values())

    def stats(self) -> dict[str, dict]:
        return {hub: spool.stats() for hub, spool in self.spools.items()}

