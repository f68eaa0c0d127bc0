"""The lease of a run: the process that runs it locally renews `runs.lease_until` (epoch ms) as it works.

A claim takes the lease for `RUN_LEASE_SECONDS`. The owner renews it at every partition it exports, scores and
indexes and at each stage (:meth:`Lease.tick`, which writes at most every third of the lease), without a thread:
a thread would make the local pool fork from a multi-threaded process. A run still active whose lease lapsed was
left by a process that died (SIGKILL, out of memory, a lost host): `fleetscore.runs.recovery` fails it with that
reason and it can be retried at once. Once a run is handed to a remote job (Azure ML) the lease is cleared: the job
owns the run and the timer reconciles it with the job's state.

`FLEETSCORE_TEST_KILL_AT` (tests only): a stage name (`export`, `score`, `index`) at whose first tick this process
SIGKILLs itself, so the kill test stops a real run at a chosen point (`tests/integration/runs/test_kill.py`).
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import clock, db

KILL_AT_ENV = "FLEETSCORE_TEST_KILL_AT"


class LeaseLost(RuntimeError):
    """Another process took the run over after this one's lease lapsed: stop working on it."""


def new_owner() -> str:
    """`host:pid:token`, unique per claim (a pid alone repeats across hosts and restarts)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lease:
    """The lease of one claimed run, held by this process as `owner` for `seconds`."""

    def __init__(self, engine: Engine, run_id: str, owner: str, seconds: int) -> None:
        self.engine, self.run_id, self.owner = engine, run_id, owner
        self.ms = seconds * 1000
        self._renewed = time.monotonic()

    def tick(self, stage: str) -> None:
        """A unit of work is done: renew the lease when a third of it has passed (raises LeaseLost)."""
        if os.environ.get(KILL_AT_ENV) == stage:
            os.kill(os.getpid(), signal.SIGKILL)  # the kill test's stop point (see the module docstring)
        if (time.monotonic() - self._renewed) * 1000 >= self.ms / 3:
            self.renew()

    def renew(self) -> None:
        """Extend the lease to now + its length while this process still owns the active run."""
        now = clock.now_ms()
        r = db.runs
        with self.engine.begin() as conn:
            held = conn.execute(r.update().where(r.c.run_id == self.run_id, r.c.lease_owner == self.owner,
                                                 r.c.status.in_(db.RUN_ACTIVE))
                                .values(lease_until=now + self.ms)).rowcount
        if held != 1:
            raise LeaseLost(f"run {self.run_id}: the lease of {self.owner} was taken over or the run ended")
        self._renewed = time.monotonic()

    def release(self, **values: object) -> bool:
        """Hand the run over (a remote job now owns it: lease cleared) with `values`; False if not owned."""
        r = db.runs
        with self.engine.begin() as conn:
            return conn.execute(r.update().where(r.c.run_id == self.run_id, r.c.lease_owner == self.owner)
                                .values(lease_until=None, **values)).rowcount == 1


def lapsed(lease_until: int | None, status: str, now: int) -> bool:
    """An active run whose owner stopped renewing its lease (a remote-owned run has none)."""
    return status in db.RUN_ACTIVE and lease_until is not None and lease_until < now


def lapsed_clause(now: int) -> sa.ColumnElement[bool]:
    """SQL for :func:`lapsed`."""
    r = db.runs
    return sa.and_(r.c.status.in_(db.RUN_ACTIVE), r.c.lease_until.is_not(None), r.c.lease_until < now)
