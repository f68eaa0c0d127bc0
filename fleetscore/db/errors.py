"""Which database errors are transient: the ones a retry (or a redelivered batch) can get past."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

TRANSIENT_MESSAGES = ("deadlock", "database is locked", "could not serialize", "connection", "timeout", "1205")
"""Lower-case fragments of a driver's message that mark an error as transient (1205: SQL Server's deadlock)."""


class LockNotGranted(RuntimeError):
    """SQL Server's `sp_getapplock` refused a lock; `code` is its return code: -1 timed out, -2 canceled,
    -3 chosen as a deadlock victim (all transient), -999 a parameter or call error (not transient)."""

    TRANSIENT_CODES = (-1, -2, -3)

    def __init__(self, code: int) -> None:
        super().__init__(f"sp_getapplock did not grant the lock (return code {code})")
        self.code = code


def is_transient(exc: BaseException) -> bool:
    """True for database errors worth a retry: lost connections, deadlocks, locks, races on a key.

    An IntegrityError counts: it only arises when a concurrent writer stored the same key between
    our read and our insert, and the redelivered batch then sees that row.
    """
    if isinstance(exc, LockNotGranted):
        return exc.code in LockNotGranted.TRANSIENT_CODES
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.IntegrityError, sa_exc.TimeoutError,
                        sa_exc.DisconnectionError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        text = str(exc.orig).lower() if exc.orig is not None else ""
        return any(s in text for s in TRANSIENT_MESSAGES)
    return False
