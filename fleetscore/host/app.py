"""The local host: serves `function_app`'s functions the way the Azure Functions host would, without Core Tools.

- **Timer** functions fire on their NCRONTAB schedule (UTC) with the schedule monitor's semantics
  (:mod:`fleetscore.host.timers`): missed occurrences while the host was down give one past-due invocation at
  start; `runOnStartup` is honoured only when the binding sets it. `POST /admin/timers/<function>` (also
  `/admin/functions/<function>`, like the host's admin API) fires a slot now: body `{"slot": ISO}` (default
  the newest occurrence), `"wait": true` to answer after the invocation. Manual fires leave the status alone.
- **Event Hub** functions are fed from `POST /events` (or `/events/<hub>`) on loopback: one request body is
  one event body (a JSON reading or array, as devices send). It is appended to a durable spool
  (:mod:`fleetscore.host.spool`) and answered 202 only after the fsync. A dispatcher per function reads the
  spool in order, invokes the function with up to host.json `maxEventBatchSize` `EventHubEvent`s, applies
  the function's retry policy, and checkpoints only after the invocation returned (a crash redelivers the
  batch: at-least-once; the ingest function is idempotent). When the retries are exhausted the host moves
  on as the Event Hubs host does, but keeps the batch in `spool/<hub>/failed/`.
- **Blob** functions fire for every blob under their path in FLEETSCORE_STORAGE, once per blob version (name
  + ETag). The store is listed every `blob_poll_seconds` (the local stand-in for Event Grid, so a blob written
  while the host was down fires at the next start too; names with a segment starting with `.` — writers'
  temp files — are not blobs to fire for). Outcomes are kept as receipts (:mod:`fleetscore.host.receipts`);
  a version failing host.json `poisonBlobThreshold` times is recorded as poison and logged.

Each invocation is logged as the host logs it ("Executing 'Functions.x' (Reason=…, Id=…)") with its
invocation id in the log context. `GET /health` returns JSON: status, functions, spool backlog, receipts, last
invocations. A host thread (dispatcher, timer, blob poller, HTTP) that dies on an error makes the status
`degraded`, named in `dead_threads`; `POST /events` then answers 503 for a hub whose dispatcher died (the
spool keeps what is not delivered; restart the host). `stop()` (Ctrl-C / SIGTERM through
:meth:`LocalHost.run_until_signalled`) stops accepting requests, lets the running invocations finish (a retry
wait is abandoned: that batch is redelivered at the next start), and flushes the spool and receipts.

State folder (`state_dir`): `spool/<hub>/`, `blobreceipts/<function>.jsonl`, `timers/<function>.json`, and
`host.lock` (one host per state folder).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fleetscore.clock import now_ms
from fleetscore.context import Services, set_services
from fleetscore.host.bindings import (
    BLOB,
    EVENT_HUB,
    TIMER,
    HostConfigError,
    HostFunction,
    HostJson,
    SettingSource,
    default_host_json,
    plan_functions,
    read_functions,
)
from fleetscore.host.receipts import DONE, FAILED, POISON, BlobReceipts
from fleetscore.host.spool import Spool, SpoolRecord
from fleetscore.host.timers import (
    ScheduleStatus,
    TimerStatusStore,
    after_invocation,
    check_past_due,
    is_occurrence,
    iso,
    next_occurrence,
)
from fleetscore.logs import log_context
from fleetscore.settings import Settings

log = logging.getLogger("fleetscore.host")
MAX_EVENT_BYTES = 1024 * 1024
"""Event Hubs' largest event (Standard tier: 1 MB)."""
RECENT = 50


def _hub_folder(hub: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", hub) or "_"


def _hidden(key: str) -> bool:
    return any(seg.startswith(".") for seg in key.split("/")[1:])


class _RetryContext:
    def __init__(self, retry_count: int, max_retry_count: int, exception: Any = None) -> None:
        self.retry_count, self.max_retry_count, self.exception = retry_count, max_retry_count, exception


class InvocationContext:
    """What a function parameter named `context` receives (the `azure.functions.Context` properties)."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str,
                 retry_context: _RetryContext) -> None:
        self.invocation_id = invocation_id
        self.function_name = function_name
        self.function_directory = function_directory
        self.retry_context = retry_context
        self.trace_context = None
        self.thread_local_storage = threading.local()


class LocalHost:
    """Serve an Azure Functions app's timer, Event Hub and blob functions on this machine.

    `app` defaults to `function_app.app` (and host.json to the one beside it); `functions` may instead give
    the app's already-read `Function` objects. The constructor reads and resolves every binding and raises
    :class:`HostConfigError` naming the function and setting when one cannot be served; `start()` opens the
    state, the services and the HTTP endpoint (127.0.0.1:`port`, 0 = a free port).
    """

    def __init__(self, settings: Settings, app: Any = None, port: int = 0,
                 state_dir: Path | str = Path(".fleetscore/host"), *, functions: list | None = None,
                 host_json: Path | str | None = None, bind: str = "127.0.0.1", blob_poll_seconds: float = 1.0,
                 fsync: bool = True, shield_workers: bool = False) -> None:
        self.settings = settings
        if functions is None:
            functions = read_functions(app)
        if host_json is None and app is None:
            host_json = default_host_json()
        self.config = HostJson.load(Path(host_json) if host_json is not None else None)
        self.source = SettingSource(settings)
        self.functions, self.skipped = plan_functions(functions, self.source)
        if not self.functions:
            raise HostConfigError("the app has no timer, Event Hub or blob function for the local host to serve")
        self.by_name = {f.name: f for f in self.functions}
        self.port, self.bind = port, bind
        self.state_dir = Path(state_dir)
        self.blob_poll_seconds = blob_poll_seconds
        self.fsync = fsync
        self.shield_workers = shield_workers
        self.services: Services | None = None
        self.spools: dict[str, Spool] = {}
        self.receipts: dict[str, BlobReceipts] = {}
        self.timer_store: TimerStatusStore | None = None
        self.timer_status: dict[str, ScheduleStatus] = {}
        self._timer_locks = {f.name: threading.Lock() for f in self.functions if f.trigger == TIMER}
        self._stop = threading.Event()
        self._signalled = threading.Event()
        self._state_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._dead: dict[str, str] = {}
        self._server: ThreadingHTTPServer | None = None
        self._serving = False
        self._lock_fh: Any = None
        self._recent: deque[dict] = deque(maxlen=RECENT)
        self._stats = {f.name: {"invocations": 0, "failures": 0, "last": None} for f in self.functions}
        self._running: dict[str, dict] = {}
        self.started_at: int | None = None
        self.stopping = False

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the host is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def hubs(self) -> dict[str, list[HostFunction]]:
        out: dict[str, list[HostFunction]] = {}
        for fn in self.functions:
            if fn.trigger == EVENT_HUB:
                out.setdefault(fn.event_hub, []).append(fn)
        return out

    def start(self) -> LocalHost:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._open_services()
            for hub, fns in self.hubs().items():
                self.spools[hub] = Spool(self.state_dir / "spool" / _hub_folder(hub), [f.name for f in fns],
                                         fsync=self.fsync)
            for fn in self.functions:
                if fn.trigger == BLOB:
                    self.receipts[fn.name] = BlobReceipts(self.state_dir / "blobreceipts", fn.name, fsync=self.fsync)
            self.timer_store = TimerStatusStore(self.state_dir / "timers")
            if self.shield_workers:
                self._start_scoring_forkserver()
            self._server = _Server((self.bind, self.port), _Handler, host=self)
            self.started_at = now_ms()
            self._spawn("http", self._server.serve_forever, 0.2)
            self._serving = True
            for fn in self.functions:
                if fn.trigger == EVENT_HUB:
                    self._spawn(f"eventhub:{fn.name}", self._dispatch_events, fn)
                elif fn.trigger == TIMER:
                    self._spawn(f"timer:{fn.name}", self._run_timer, fn)
            blob_fns = [f for f in self.functions if f.trigger == BLOB]
            if blob_fns:
                self._spawn("blobs", self._poll_blobs, blob_fns)
        except BaseException:
            self.stop()
            raise
        log.info("local host listening on %s: %s", self.url, ", ".join(f"{f.name} ({f.describe()})"
                                                                          for f in self.functions))
        return self

    def _take_lock(self) -> None:
        import fcntl

        self._lock_fh = open(self.state_dir / "host.lock", "a+")  # noqa: SIM115 - held while the host runs
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            self._lock_fh = None
            raise HostConfigError(f"another local host is running with the state folder {self.state_dir}") from None

    def _open_services(self) -> None:
        from sqlalchemy.engine import make_url

        self.services = Services(self.settings)
        try:
            _ = self.services.engine  # creates or migrates the schema now, not in the first invocation
        except Exception as exc:
            where = make_url(self.settings.sql_url).render_as_string(hide_password=True)
            raise HostConfigError(f"cannot open the database FLEETSCORE_SQL_URL={where}: "
                                  f"{type(exc).__name__}: {exc}") from None
        if any(f.trigger == BLOB for f in self.functions):
            try:
                _ = self.services.store
            except Exception as exc:
                raise HostConfigError(f"cannot open the storage FLEETSCORE_STORAGE: {type(exc).__name__}: {exc}") \
                    from None
        set_services(self.services)

    def _start_scoring_forkserver(self) -> None:
        """Ctrl-C in a terminal signals the whole foreground process group, the local backend's scoring workers
        included, which would fail a run in progress instead of letting it finish. Start the multiprocessing
        forkserver now, from the main thread with SIGINT ignored: it and the workers it forks keep ignoring it
        (the host alone handles Ctrl-C). The local backend forks its workers through the forkserver whenever
        the process has other threads, as the host always does, so it reuses this server."""
        import multiprocessing
        import signal

        if (self.settings.scoring_backend != "local" or not any(f.trigger == TIMER for f in self.functions)
                or threading.current_thread() is not threading.main_thread()
                or "forkserver" not in multiprocessing.get_all_start_methods()):
            return
        try:
            from multiprocessing import forkserver

            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["scoring_job.score"])  # as fleetscore.backends.local sets it
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                forkserver.ensure_running()
            finally:
                signal.signal(signal.SIGINT, previous)
        except Exception:  # only a nicety: without it Ctrl-C may fail a run that is scoring
            log.warning("could not pre-start the scoring forkserver", exc_info=True)

    def _spawn(self, name: str, target: Callable, *args: Any) -> threading.Thread:
        self._threads = [t for t in self._threads if t.is_alive() or not t.name.startswith("host-admin:")]
        thread = threading.Thread(target=self._guard, args=(name, target, *args), name=f"host-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _guard(self, name: str, target: Callable, *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:
            log.exception("local host thread %s stopped on an error", name)
            if not name.startswith("admin:"):  # a one-off manual fire is not a service the host keeps running
                with self._state_lock:
                    self._dead[name] = f"{type(exc).__name__}: {exc}"[:500]

    def dead_threads(self) -> dict[str, str]:
        """`{thread name: error}` of the host's threads (http, eventhub:<fn>, timer:<fn>, blobs) that died."""
        with self._state_lock:
            return dict(self._dead)

    def stop(self) -> None:
        """Stop accepting requests, let running invocations finish, flush the spool and receipts."""
        with self._state_lock:
            if self.stopping:
                return
            self.stopping = True
        started = self.started_at is not None
        if started:
            log.info("local host stopping: finishing running invocations")
        self._stop.set()  # first: a request waiting in a retry wait (admin fire with "wait") returns at once
        if self._server is not None:
            if self._serving:
                self._server.shutdown()
            self._server.server_close()  # joins the request threads
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
        for spool in self.spools.values():
            spool.close()
        for receipts in self.receipts.values():
            receipts.close()
        if self.services is not None:
            from fleetscore import context

            if context._services is self.services:
                set_services(None)
            self.services.close()
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None
        if started:
            log.info("local host stopped")

    def run_until_signalled(self) -> None:
        """Block until SIGINT or SIGTERM (main thread only), then stop cleanly. A second signal is not caught."""
        import signal

        def handler(signum: int, _frame: Any) -> None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            log.info("received %s", signal.Signals(signum).name)
            self._signalled.set()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._signalled.wait(0.5):
                pass
            self.stop()
        finally:
            for sig, old in previous.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, old)

    def request_stop(self) -> None:
        """Ask `run_until_signalled` to return (as a signal would)."""
        self._signalled.set()

    # ----------------------------------------------------------------------------------------- invoking
    def _invoke(self, fn: HostFunction, make_args: Callable[[], dict], *, reason: str, retry: int = 0) -> str | None:
        """Run one invocation, logged under its own invocation id; returns None on success, else the error."""
        invocation_id = str(uuid.uuid4())
        started = now_ms()
        t0 = time.perf_counter()
        max_retry = fn.retry.max_retry_count if fn.retry else 0
        error = None
        with log_context(invocation_id=invocation_id):
            log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)%s", fn.name, reason, invocation_id,
                     f" retry {retry} of {max_retry}" if retry else "")
            self._running[invocation_id] = {"function": fn.name, "id": invocation_id, "started": iso(started)}
            try:
                kwargs = make_args()
                if fn.context_arg:
                    kwargs[fn.context_arg] = InvocationContext(invocation_id, fn.name, str(self.state_dir),
                                                               _RetryContext(retry, max_retry))
                result = fn.func(**kwargs)
                if inspect.isawaitable(result):
                    asyncio.run(result)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", fn.name, invocation_id,
                          (time.perf_counter() - t0) * 1000, exc_info=True)
            else:
                log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", fn.name, invocation_id,
                         (time.perf_counter() - t0) * 1000)
            finally:
                self._running.pop(invocation_id, None)
        entry = {"function": fn.name, "id": invocation_id, "reason": reason, "started": iso(started),
                 "duration_ms": round((time.perf_counter() - t0) * 1000), "status": "failed" if error else "succeeded",
                 "error": error[:500] if error else None, "retry": retry}
        with self._state_lock:
            self._recent.append(entry)
            stats = self._stats[fn.name]
            stats["invocations"] += 1
            stats["failures"] += 1 if error else 0
            stats["last"] = entry
        return error

    def _invoke_with_retry(self, fn: HostFunction, make_args: Callable[[], dict], *, reason: str) -> bool | None:
        """True on success, False when the retry policy is exhausted, None when the host stopped mid-wait."""
        retry = 0
        while True:
            if self._invoke(fn, make_args, reason=reason, retry=retry) is None:
                return True
            retry += 1
            if fn.retry is None or not fn.retry.allows(retry):
                return False
            delay = fn.retry.delay(retry)
            log.warning("Functions.%s: retry %d in %.1f s (%s)", fn.name, retry, delay, fn.retry.strategy)
            if self._stop.wait(delay):
                return None

    # -------------------------------------------------------------------------------------------- events
    def post_event(self, body: bytes, hub: str | None = None) -> SpoolRecord:
        """Store one event durably for the Event Hub functions of `hub` (the only hub when None)."""
        if self.stopping:
            raise RuntimeError("the host is stopping")
        if hub is None:
            if len(self.spools) != 1:
                raise KeyError(f"name the event hub: POST /events/<hub> (have {sorted(self.spools)})")
            hub = next(iter(self.spools))
        if hub not in self.spools:
            raise KeyError(f"no Event Hub function listens to {hub!r} (have {sorted(self.spools)})")
        dead = self.dead_threads()
        stopped = [fn.name for fn in self.hubs()[hub] if f"eventhub:{fn.name}" in dead]
        if stopped:
            raise RuntimeError(f"the dispatcher of {', '.join(stopped)} stopped on an error "
                               f"({dead[f'eventhub:{stopped[0]}']}); restart the host")
        return self.spools[hub].append(body)

    def _events(self, fn: HostFunction, records: list[SpoolRecord]) -> list:
        import azure.functions as func
        from azure.functions.meta import Datum

        context = Datum(json.dumps({"EventHubName": fn.event_hub, "ConsumerGroup": fn.binding.get("consumerGroup"),
                                    "FullyQualifiedNamespace": "localhost", "PartitionId": "0"}), "json")
        return [func.EventHubEvent(body=r.body, sequence_number=r.sequence_number, offset=str(r.offset),
                                   enqueued_time=datetime.fromtimestamp(r.enqueued_ms / 1000, tz=timezone.utc),
                                   partition_key=None, trigger_metadata={"PartitionContext": context})
                for r in records]

    def _dispatch_events(self, fn: HostFunction) -> None:
        spool = self.spools[fn.event_hub]
        size = self.config.max_event_batch_size
        while not self._stop.is_set():
            done = spool.checkpointed(fn.name)
            records = spool.read(done, size)
            if not records:
                spool.wait(done, 0.5)
                continue
            units = [records] if fn.many else [[r] for r in records]
            for unit in units:
                if self._stop.is_set():
                    return  # the rest of this read is delivered at the next start

                def args(unit: list[SpoolRecord] = unit) -> dict:
                    events = self._events(fn, unit)
                    return {fn.arg_name: events if fn.many else events[0]}

                outcome = self._invoke_with_retry(
                    fn, args, reason=f"EventHub={fn.event_hub} {len(unit)} event(s) "
                                     f"{unit[0].sequence_number}..{unit[-1].sequence_number}")
                if outcome is None:
                    return  # stopping in a retry wait: not checkpointed, redelivered at the next start
                if outcome is False:
                    self._keep_failed(fn, unit)
                spool.checkpoint(fn.name, unit[-1].sequence_number)

    def _keep_failed(self, fn: HostFunction, records: list[SpoolRecord]) -> None:
        folder = self.state_dir / "spool" / _hub_folder(fn.event_hub) / "failed"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{fn.name}-{records[0].sequence_number}-{records[-1].sequence_number}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in records:
                doc: dict[str, Any] = {"sequence_number": r.sequence_number, "enqueued_ms": r.enqueued_ms}
                try:
                    doc["body"] = r.body.decode("utf-8")
                except UnicodeDecodeError:
                    doc["body_b64"] = base64.b64encode(r.body).decode()
                fh.write(json.dumps(doc) + "\n")
        log.error("Functions.%s: retries exhausted for events %d..%d; moving on (kept in %s)", fn.name,
                  records[0].sequence_number, records[-1].sequence_number, path)

    # -------------------------------------------------------------------------------------------- timers
    def _timer_request(self, status: ScheduleStatus, past_due: bool) -> Any:
        from azure.functions.timer import TimerRequest

        return TimerRequest(past_due=past_due, schedule_status=status.to_binding(), schedule={"AdjustForDST": True})

    def _run_timer(self, fn: HostFunction) -> None:
        store = self.timer_store
        assert store is not None
        now = now_ms()
        if fn.use_monitor:
            status, missed = check_past_due(fn.schedule, store.load(fn.name), now)
            store.save(fn.name, status)
        else:
            status, missed = ScheduleStatus(next_occurrence(fn.schedule, now), None, now), None
        self.timer_status[fn.name] = status
        if missed is not None:
            log.info("Functions.%s: occurrence %s was missed; invoking it past due", fn.name, iso(missed))
            status = self._fire_scheduled(fn, status, missed, past_due=True) or status
        elif fn.run_on_startup:
            with self._timer_locks[fn.name]:
                self._invoke_with_retry(fn, lambda: {fn.arg_name: self._timer_request(status, False)},
                                        reason="Timer fired at startup (runOnStartup)")
        while not self._stop.is_set():
            now = now_ms()
            if now < status.next_ms:
                self._stop.wait(min((status.next_ms - now) / 1000, 30.0))
                continue
            fired = self._fire_scheduled(fn, status, status.next_ms, past_due=False)
            if fired is None:
                return
            status = fired

    def _fire_scheduled(self, fn: HostFunction, status: ScheduleStatus, occurrence: int, *,
                        past_due: bool) -> ScheduleStatus | None:
        """Invoke one scheduled occurrence, then persist the next status (None: stopped during a retry wait)."""
        with self._timer_locks[fn.name]:
            outcome = self._invoke_with_retry(fn, lambda: {fn.arg_name: self._timer_request(status, past_due)},
                                              reason=f"Timer fired at {iso(now_ms())} for {iso(occurrence)}"
                                                     + (" (past due)" if past_due else ""))
        if outcome is None:
            return None
        new = after_invocation(fn.schedule, occurrence, now_ms())
        if fn.use_monitor and self.timer_store is not None:
            self.timer_store.save(fn.name, new)
        self.timer_status[fn.name] = new
        return new

    def fire_timer(self, name: str, slot_ms: int | None = None, *, wait: bool = False) -> dict:
        """Fire timer function `name` for schedule slot `slot_ms` now (default: the newest occurrence).

        The TimerRequest carries `ScheduleStatus.Next` = the slot, as a scheduled fire of that slot would.
        Raises KeyError for an unknown timer function, ValueError for a slot that is not a past occurrence.
        """
        from fleetscore.runs.slots import latest_occurrence

        fn = self.by_name.get(name)
        if fn is None or fn.trigger != TIMER:
            raise KeyError(f"no timer function {name!r} (timers: {sorted(self._timer_locks)})")
        if self.stopping:
            raise RuntimeError("the host is stopping")
        now = now_ms()
        slot = latest_occurrence(fn.schedule, now) if slot_ms is None else int(slot_ms)
        if slot > now + 1000:
            raise ValueError(f"slot {iso(slot)} is in the future")
        if not is_occurrence(fn.schedule, slot):
            raise ValueError(f"slot {iso(slot)} is not an occurrence of the schedule {fn.schedule!r}")
        status = ScheduleStatus(slot, None, now)
        result: dict[str, Any] = {"function": name, "slot": iso(slot)}

        def fire() -> None:
            with self._timer_locks[name]:
                outcome = self._invoke_with_retry(fn, lambda: {fn.arg_name: self._timer_request(status, False)},
                                                  reason=f"Manual fire for {iso(slot)} (admin API)")
            result["status"] = {True: "succeeded", False: "failed", None: "abandoned"}[outcome]

        if wait:
            fire()
        else:
            self._spawn(f"admin:{name}", fire)
            result["status"] = "accepted"
        return result

    # --------------------------------------------------------------------------------------------- blobs
    def _poll_blobs(self, fns: list[HostFunction]) -> None:
        while not self._stop.is_set():
            for fn in fns:
                if self._stop.is_set():
                    break
                try:
                    self.scan_blobs(fn)
                except Exception:
                    log.exception("Functions.%s: listing %s failed; retrying at the next poll", fn.name,
                                  fn.list_prefix)
            self._stop.wait(self.blob_poll_seconds)

    def scan_blobs(self, fn: HostFunction) -> int:
        """Fire `fn` for each blob version under its path without a final receipt; returns the count fired."""
        assert self.services is not None
        store, receipts = self.services.store, self.receipts[fn.name]
        fired = 0
        for info in sorted(store.list(fn.list_prefix), key=lambda i: i.name):
            if self._stop.is_set():
                break
            if _hidden(info.name) or not fn.matches(info.name):
                continue
            receipt = receipts.get(info.name, info.etag)
            if receipt is not None and receipt.final:
                continue
            fired += self._fire_blob(fn, info.name)
        return fired

    def _fire_blob(self, fn: HostFunction, key: str) -> int:
        from azure.functions.blob import InputStream

        from fleetscore.storage.base import BlobNotFound

        store, receipts = self.services.store, self.receipts[fn.name]
        try:
            data, info = store.get_with_info(key)
        except BlobNotFound:
            return 0  # deleted since the listing
        receipt = receipts.get(info.name, info.etag)
        if receipt is not None and receipt.final:
            return 0
        local = store.local_path(info.name)
        props = {"ETag": info.etag, "Length": info.size, "ContentLength": info.size,
                 "LastModified": iso(info.last_modified_ms)}

        def args() -> dict:
            return {fn.arg_name: InputStream(data=data, name=info.name, length=info.size,
                                             uri=local.resolve().as_uri() if local is not None else None,
                                             blob_properties=props, metadata={})}

        attempts = (receipt.attempts if receipt is not None else 0) + 1
        error = self._invoke(fn, args, reason=f"New blob detected: {info.name} (ETag {info.etag})",
                             retry=attempts - 1)
        if error is None:
            receipts.record(info.name, info.etag, DONE, attempts=attempts)
        elif attempts >= self.config.poison_blob_threshold:
            receipts.record(info.name, info.etag, POISON, attempts=attempts, error=error)
            log.error("Functions.%s: blob %s (ETag %s) failed %d time(s); poisoned (poisonBlobThreshold %d), it "
                      "will not fire again", fn.name, info.name, info.etag, attempts,
                      self.config.poison_blob_threshold)
        else:
            receipts.record(info.name, info.etag, FAILED, attempts=attempts, error=error)
        return 1

    # -------------------------------------------------------------------------------------------- health
    def health(self) -> dict:
        with self._state_lock:
            stats = {k: dict(v) for k, v in self._stats.items()}
            recent = list(self._recent)[::-1]
        functions = []
        for fn in self.functions:
            doc: dict[str, Any] = {"name": fn.name, "trigger": fn.trigger, "describe": fn.describe(), **stats[fn.name]}
            if fn.trigger == TIMER:
                doc["schedule"] = fn.schedule
                status = self.timer_status.get(fn.name)
                doc["next"] = iso(status.next_ms) if status else None
                doc["last_occurrence"] = iso(status.last_ms) if status and status.last_ms else None
            elif fn.trigger == EVENT_HUB:
                doc["event_hub"] = fn.event_hub
                doc["max_event_batch_size"] = self.config.max_event_batch_size
                spool = self.spools.get(fn.event_hub)
                if spool is not None:
                    doc["checkpoint"] = spool.checkpointed(fn.name)
                    doc["backlog"] = spool.backlog(fn.name)
            elif fn.trigger == BLOB:
                doc["path"] = fn.path
                receipts = self.receipts.get(fn.name)
                if receipts is not None:
                    doc["receipts"] = receipts.counts()
            functions.append(doc)
        dead = self.dead_threads()
        if self.stopping:
            status = "stopping"
        elif not self.started_at:
            status = "created"
        else:
            status = "degraded" if dead else "running"
        return {
            "status": status,
            "dead_threads": dead,
            "url": self.url if self._server is not None else None,
            "started_at": iso(self.started_at) if self.started_at else None,
            "state_dir": str(self.state_dir),
            "functions": functions,
            "skipped": self.skipped,
            "spool": {hub: spool.stats() for hub, spool in self.spools.items()},
            "backlog": sum(max(spool.backlog(c) for c in spool.consumers) for spool in self.spools.values()),
            "running": list(self._running.values()),
            "last_invocations": recent,
        }


# ------------------------------------------------------------------------------------------------- HTTP
class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, *, host: LocalHost) -> None:
        self.host = host
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30
    server_version = "fleetscore-host"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("http %s %s", self.address_string(), format % args)

    def _reply(self, status: int, doc: dict) -> None:
        data = json.dumps(doc, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self, limit: int) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "send a Content-Length (no chunked bodies)"})
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
            return None
        if length > limit:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"an event is at most {limit} bytes"})
            return None
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") in ("/health", "/admin/host/status"):
            self._reply(HTTPStatus.OK, self.server.host.health())
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        host = self.server.host
        path = self.path.split("?", 1)[0].rstrip("/")
        if host.stopping:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the host is stopping"})
            return
        if path == "/events":
            self._post_event(host, None)
        elif path.startswith("/events/"):
            self._post_event(host, unquote(path[len("/events/"):]))
        elif m := re.fullmatch(r"/admin/(?:timers|functions)/([^/]+)", path):
            self._post_timer(host, unquote(m.group(1)))
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}"})

    def _post_event(self, host: LocalHost, hub: str | None) -> None:
        body = self._body(MAX_EVENT_BYTES)
        if body is None:
            return
        if not body.strip():
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "empty event body"})
            return
        try:
            record = host.post_event(body, hub)
        except KeyError as exc:
            self._reply(HTTPStatus.NOT_FOUND, {"error": str(exc.args[0])})
            return
        except RuntimeError as exc:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        self._reply(HTTPStatus.ACCEPTED, {"sequence_number": record.sequence_number, "offset": str(record.offset),
                                          "enqueued_time": iso(record.enqueued_ms)})

    def _post_timer(self, host: LocalHost, name: str) -> None:
        from fleetscore.ingest.readings import InvalidReading, parse_ts

        body = self._body(64 * 1024)
        if body is None:
            return
        try:
            doc = json.loads(body) if body.strip() else {}
            if not isinstance(doc, dict):
                raise ValueError("the body must be a JSON object")
            slot = doc.get("slot")
            slot_ms = parse_ts(slot, naive_tz=timezone.utc) if slot not in (None, "") else None
            result = host.fire_timer(name, slot_ms, wait=bool(doc.get("wait", False)))
        except KeyError as exc:
            self._reply(HTTPStatus.NOT_FOUND, {"error": str(exc.args[0])})
            return
        except InvalidReading as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"slot: {exc.detail}"})
            return
        except ValueError as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except RuntimeError as exc:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        self._reply(HTTPStatus.OK if "wait" in doc and doc["wait"] else HTTPStatus.ACCEPTED, result)


__all__ = ["HostConfigError", "InvocationContext", "LocalHost"]
