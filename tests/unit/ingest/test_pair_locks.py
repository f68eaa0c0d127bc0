"""SQL Server's per-pair ingest lock, at the SQL level: the T-SQL pyodbc receives and what `lock_pairs` runs on
an mssql connection (SQLAlchemy's mock engine records each statement, compiled by the real pyodbc dialect)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.ingest.store import APPLOCK_PREFIX, APPLOCK_TIMEOUT_MS, lock_pairs, mssql_pair_locks

TAKE = ("IF @rc >= 0 EXEC @rc = sp_getapplock @Resource = ?, @LockMode = 'Exclusive', "
        f"@LockOwner = 'Transaction', @LockTimeout = {APPLOCK_TIMEOUT_MS};")


def pyodbc_dialect() -> sa.Dialect:
    """The dialect an Azure SQL engine uses, with pyodbc's qmark parameters."""
    return db.create_db_engine("mssql+pyodbc://user:pw@fleet.database.windows.net/db"
                               "?driver=ODBC+Driver+18+for+SQL+Server").dialect


class Returns:
    """The result of the lock batch: its one row holds `sp_getapplock`'s last return code."""

    def __init__(self, code: int) -> None:
        self.code = code

    def scalar_one(self) -> int:
        return self.code


def run_lock_pairs(pairs: set[tuple[str, str]], code: int = 0) -> list[tuple[str, tuple]]:
    """`lock_pairs` on an mssql connection; returns each statement as pyodbc gets it, with its parameters."""
    dialect = pyodbc_dialect()
    seen: list[tuple[str, tuple]] = []

    def execute(statement, _parameters):
        compiled = statement.compile(dialect=dialect)
        params = compiled.construct_params()
        seen.append((str(compiled), tuple(params[name] for name in compiled.positiontup)))
        return Returns(code)

    lock_pairs(sa.create_mock_engine("mssql+pyodbc://", execute), pairs)
    return seen


def test_lock_batch_tsql_and_parameters():
    compiled = mssql_pair_locks(["fleetscore/ingest/a/t", "fleetscore/ingest/b/t"]).compile(dialect=pyodbc_dialect())
    assert str(compiled).splitlines() == [
        "DECLARE @nocount int = @@OPTIONS & 512, @rc int = 0;",
        "SET NOCOUNT ON;",
        "SELECT TOP (0) @rc = 0 FROM readings;",
        TAKE,
        TAKE,
        "IF @nocount = 0 SET NOCOUNT OFF;",
        "SELECT @rc AS rc",
    ]
    params = compiled.construct_params()
    assert [params[n] for n in compiled.positiontup] == ["fleetscore/ingest/a/t", "fleetscore/ingest/b/t"]


def test_lock_pairs_on_sql_server_locks_every_pair_in_sorted_order():
    pairs = {("d-2", "temp"), ("d-1", "rh"), ("d-10", "temp"), ("d-1", "temp")}
    (statement, params), = run_lock_pairs(pairs)
    assert statement.count("sp_getapplock") == 4 and "@LockOwner = 'Transaction'" in statement
    assert params == tuple(APPLOCK_PREFIX + k for k in ["d-1/rh", "d-1/temp", "d-10/temp", "d-2/temp"])


def test_many_pairs_go_in_sorted_chunks_below_the_parameter_limit():
    pairs = {(f"d-{i:04d}", "temp") for i in range(db.IN_CHUNK + 5)}
    seen = run_lock_pairs(pairs)
    assert [len(p) for _, p in seen] == [db.IN_CHUNK, 5]
    resources = [r for _, p in seen for r in p]
    assert resources == sorted(resources) == [f"{APPLOCK_PREFIX}d-{i:04d}/temp" for i in range(db.IN_CHUNK + 5)]


@pytest.mark.parametrize(("code", "transient"), [(-1, True), (-2, True), (-3, True), (-999, False)])
def test_a_refused_lock_raises_and_says_whether_a_redelivery_can_help(code, transient):
    with pytest.raises(db.LockNotGranted) as raised:
        run_lock_pairs({("d-1", "temp")}, code=code)
    assert raised.value.code == code and db.is_transient(raised.value) is transient


def test_granted_codes_pass():
    for code in (0, 1):  # granted at once, granted after waiting
        assert len(run_lock_pairs({("d-1", "temp")}, code=code)) == 1
    assert run_lock_pairs(set()) == []
