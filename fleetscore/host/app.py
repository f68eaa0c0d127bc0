"""The local host: serves `function_app`'s functions the way the Azure Functions host would, without Core Tools.

:class:`LocalHost` owns the lifecycle (the state folder and its lock, the services, the scoring forkserver,
the threads, health) and composes one part per trigger kind, none of which imports this module:

| module | serves |
| --- | --- |
| :mod:`~fleetscore.host.bindings` | reading the app's functions and host.json, `%SETTING%` resolution |
| :mod:`~fleetscore.host.invocation` | one invocation (id, logging, context) and the retry policy |
| :mod:`~fleetscore.host.timers` | timer functions on their NCRONTAB schedule, manual fires |
| :mod:`~fleetscore.host.eventhubs` | Event Hub functions fed from a durable spool (:mod:`~fleetscore.host.spool`) |
| :mod:`~fleetscore.host.blobs` | blob functions, once per version, with receipts (:mod:`~fleetscore.host.receipts`) |
| :mod:`~fleetscore.host.httptriggers` | HTTP functions below host.json's route prefix, keyed with FLEETSCORE_API_KEY |
| :mod:`~fleetscore.host.http` | `POST /events`, `POST /admin/timers/<fn>`, `GET /health`, HTTP functions (loopback) |

`GET /health` returns JSON: status, functions, spool backlog, receipts, last invocations. A host thread
(dispatcher, timer, blob poller, HTTP) that dies on an error makes the status `degraded`, named in
`dead_threads`; `POST /events` then answers 503 for a hub whose dispatcher died (the spool keeps what is not
delivered; restart the host). `stop()` (Ctrl-C / SIGTERM through :meth:`LocalHost.run_until_signalled`)
stops accepting requests, lets the running invocations finish (a retry wait is abandoned: that batch is
redelivered at the next start), and flushes the spool and receipts.

State folder (`state_dir`): `spool/<hub>/`, `blobreceipts/<function>.jsonl`, `timers/<function>.json`, and
`host.lock` (one host per state folder).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from fleetscore.backends.local import forkserver_preload
from fleetscore.clock import iso_offset, now_ms
from fleetscore.context import Services, forget_services, set_services
from fleetscore.host.bindings import (
    BLOB,
    EVENT_HUB,
    HTTP,
    TIMER,
    HostConfigError,
    HostFunction,
    HostJson,
    SettingSource,
    default_host_json,
    plan_functions,
    read_functions,
)
from fleetscore.host.blobs import BlobTriggers
from fleetscore.host.eventhubs import EventHubs, dispatcher_thread
from fleetscore.host.http import HostServer
from fleetscore.host.httptriggers import HttpAnswer, HttpTriggers
from fleetscore.host.invocation import Invoker
from fleetscore.host.receipts import BlobReceipts
from fleetscore.host.spool import Spool, SpoolRecord
from fleetscore.host.timers import Timers
from fleetscore.settings import Settings

log = logging.getLogger("fleetscore.host")


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
            raise HostConfigError("the app has no timer, Event Hub, blob or HTTP function for the local host to serve")
        self.port, self.bind = port, bind
        self.state_dir = Path(state_dir)
        self.fsync = fsync
        self.shield_workers = shield_workers
        self.services: Services | None = None
        self._stop = threading.Event()
        self._signalled = threading.Event()
        self._state_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._dead: dict[str, str] = {}
        self._server: HostServer | None = None
        self._serving = False
        self._lock_fh: Any = None
        self.started_at: int | None = None
        self.stopping = False
        self.invoker = Invoker(self.functions, str(self.state_dir), self._stop)
        self.timers = Timers(self._served(TIMER), self.invoker, self._stop)
        self.eventhubs = EventHubs(self._served(EVENT_HUB), self.invoker, self._stop,
                                   max_batch=self.config.max_event_batch_size)
        self.blobs = BlobTriggers(self._served(BLOB), self.invoker, self._stop,
                                  poison_threshold=self.config.poison_blob_threshold, poll_seconds=blob_poll_seconds)
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self.http = HttpTriggers(self._served(HTTP), self.invoker, api_key=key, route_prefix=self.config.route_prefix)

    def _served(self, trigger: str) -> list[HostFunction]:
        return [f for f in self.functions if f.trigger == trigger]

    @property
    def spools(self) -> dict[str, Spool]:
        """The event spool of each hub."""
        return self.eventhubs.spools

    @property
    def receipts(self) -> dict[str, BlobReceipts]:
        """The blob receipts of each blob function."""
        return self.blobs.receipts

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the host is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> LocalHost:
        """Take the state folder, open the services and state, listen, and start the trigger threads."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._open_services()
            self._open_state()
            if self.shield_workers:
                self._start_scoring_forkserver()
            self._server = HostServer((self.bind, self.port), self)
            self.started_at = now_ms()
            self._spawn("http", self._server.serve_forever, 0.2)
            self._serving = True
            self._spawn_triggers()
        except BaseException:
            self.stop()
            raise
        log.info("local host listening on %s: %s", self.url, ", ".join(f"{f.name} ({f.describe()})"
                                                                          for f in self.functions))
        return self

    def _take_lock(self) -> None:
        import fcntl  # POSIX only, like the rest of the local host's process handling

        self._lock_fh = open(self.state_dir / "host.lock", "a+")  # noqa: SIM115 - held while the host runs
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            self._lock_fh = None
            raise HostConfigError(f"another local host is running with the state folder {self.state_dir}") from None

    def _open_services(self) -> None:
        """Open the database (creating or migrating the schema now, not in the first invocation) and, for blob
        functions, the store; HostConfigError naming the setting when one cannot be opened."""
        self.services = Services(self.settings)
        try:
            _ = self.services.engine
        except Exception as exc:
            where = make_url(self.settings.sql_url).render_as_string(hide_password=True)
            raise HostConfigError(f"cannot open the database FLEETSCORE_SQL_URL={where}: "
                                  f"{type(exc).__name__}: {exc}") from None
        if self.blobs.functions:
            try:
                _ = self.services.store
            except Exception as exc:
                raise HostConfigError(f"cannot open the storage FLEETSCORE_STORAGE: {type(exc).__name__}: {exc}") \
                    from None
        set_services(self.services)

    def _open_state(self) -> None:
        """The spools, blob receipts and timer status under the state folder."""
        assert self.services is not None
        self.eventhubs.open(self.state_dir / "spool", fsync=self.fsync)
        if self.blobs.functions:
            self.blobs.open(self.services.store, self.state_dir / "blobreceipts", fsync=self.fsync)
        self.timers.open(self.state_dir / "timers")

    def _start_scoring_forkserver(self) -> None:
        """Ctrl-C in a terminal signals the whole foreground process group, the local backend's scoring workers
        included, which would fail a run in progress instead of letting it finish. Start the multiprocessing
        forkserver now, from the main thread with SIGINT ignored: it and the workers it forks keep ignoring it
        (the host alone handles Ctrl-C). The local backend forks its workers through the forkserver whenever
        the process has other threads, as the host always does, so it reuses this server."""
        if (self.settings.scoring_backend != "local" or not self.timers.functions
                or threading.current_thread() is not threading.main_thread()
                or "forkserver" not in multiprocessing.get_all_start_methods()):
            return
        try:
            from multiprocessing import forkserver  # POSIX only: checked just above

            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(forkserver_preload())
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                forkserver.ensure_running()
            finally:
                signal.signal(signal.SIGINT, previous)
        except Exception:  # only a nicety: without it Ctrl-C may fail a run that is scoring
            log.warning("could not pre-start the scoring forkserver", exc_info=True)

    def _spawn_triggers(self) -> None:
        """A thread per Event Hub and timer function (in the app's order), and one blob poller."""
        for fn in self.functions:
            if fn.trigger == EVENT_HUB:
                self._spawn(dispatcher_thread(fn), self.eventhubs.dispatch, fn)
            elif fn.trigger == TIMER:
                self._spawn(f"timer:{fn.name}", self.timers.run, fn)
        if self.blobs.functions:
            self._spawn("blobs", self.blobs.poll)

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
        self.eventhubs.close()
        self.blobs.close()
        if self.services is not None:
            forget_services(self.services)
            self.services.close()
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None
        if started:
            log.info("local host stopped")

    def run_until_signalled(self) -> None:
        """Block until SIGINT or SIGTERM (main thread only), then stop cleanly. A second signal is not caught."""

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

    # ------------------------------------------------------------------------------------- what HTTP serves
    def post_event(self, body: bytes, hub: str | None = None) -> SpoolRecord:
        """Store one event durably for the Event Hub functions of `hub` (the only hub when None)."""
        if self.stopping:
            raise RuntimeError("the host is stopping")
        return self.eventhubs.post(body, hub, self.dead_threads())

    def fire_timer(self, name: str, slot_ms: int | None = None, *, wait: bool = False) -> dict:
        """Fire timer function `name` for schedule slot `slot_ms` now (default: the newest occurrence).

        The TimerRequest carries `ScheduleStatus.Next` = the slot, as a scheduled fire of that slot would.
        Raises KeyError for an unknown timer function, ValueError for a slot that is not a past occurrence.
        """
        fn = self.timers.function(name)
        if self.stopping:
            raise RuntimeError("the host is stopping")
        return self.timers.fire(fn, slot_ms, wait=wait, spawn=self._spawn)

    def is_http_path(self, path: str) -> bool:
        """Is `path` below the route prefix of the app's HTTP functions?"""
        return self.http.below_prefix(path) is not None

    def serve_http(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                   body: bytes) -> HttpAnswer | None:
        """A request to the app's HTTP functions (None: `path` is not below the route prefix)."""
        return self.http.serve(method, path, query, headers, body, self.url)

    def health(self) -> dict:
        """`GET /health`: status (created, running, degraded, stopping), each function's counts and trigger
        state, spool backlog, the invocations running and the last ones."""
        stats, recent = self.invoker.snapshot()
        dead = self.dead_threads()
        return {
            "status": self._status(dead),
            "dead_threads": dead,
            "url": self.url if self._server is not None else None,
            "started_at": iso_offset(self.started_at) if self.started_at else None,
            "state_dir": str(self.state_dir),
            "functions": [self._function_health(fn, stats[fn.name]) for fn in self.functions],
            "skipped": self.skipped,
            "spool": self.eventhubs.stats(),
            "backlog": self.eventhubs.backlog(),
            "running": self.invoker.running(),
            "last_invocations": recent,
        }

    def _status(self, dead: dict[str, str]) -> str:
        if self.stopping:
            return "stopping"
        if not self.started_at:
            return "created"
        return "degraded" if dead else "running"

    def _function_health(self, fn: HostFunction, stats: dict) -> dict[str, Any]:
        trigger_state = {TIMER: self.timers.health, EVENT_HUB: self.eventhubs.health, BLOB: self.blobs.health,
                         HTTP: self.http.health}
        return {"name": fn.name, "trigger": fn.trigger, "describe": fn.describe(), **stats,
                **trigger_state[fn.trigger](fn)}


__all__ = ["LocalHost"]
