"""Run completion through the index on real SQLite and PostgreSQL: any order, retries, partial runs, terminal
runs, racing indexers."""

from __future__ import annotations

import json
import threading

from fleetscore import clock, db
from fleetscore.predictions.index import index_prediction_file
from tests.helpers.fleet import (
    RUN_A,
    RUN_B,
    T0,
    W,
    prediction_file,
    put_run,
    rows_of,
    run_row,
    series,
    watermark,
)


def test_run_completes_when_its_last_partition_is_indexed_in_any_order(engine, folder, settings):
    until = T0 + 11 * W
    put_run(engine, folder, RUN_A, T0 - W, until, {"part-00000.parquet": 12, "part-00001.parquet": 24,
                                                   "part-00002.parquet": 12})
    files = {
        "part-00002.parquet": series("d-3", "temp", T0, 12, {4}),
        "part-00000.parquet": series("d-1", "temp", T0, 12),
        "part-00001.parquet": series("d-2", "temp", T0, 12) + series("d-2", "rh", T0, 12, status="no_model"),
    }
    results = []
    for name, rows in files.items():  # out of order: the last partition arrives first
        folder.put(f"predictions/{RUN_A}/{name}", prediction_file(rows, RUN_A))
        results.append(index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/{name}"))
        if len(results) < 3:
            assert run_row(engine, RUN_A)["status"] == "submitted" and watermark(engine) is None
    assert [r.run_completed for r in results] == [False, False, True]
    assert results[-1].run_status == "succeeded"
    run = run_row(engine, RUN_A)
    assert run["status"] == "succeeded" and run["finished_at"] is not None
    assert (run["windows"], run["windows_no_model"], run["failures"], run["failure_detail"]) == (48, 12, 0, None)
    assert watermark(engine) == until
    # indexing a partition again (new ETag) neither reopens nor re-completes the run
    folder.put(f"predictions/{RUN_A}/part-00000.parquet", prediction_file(series("d-1", "temp", T0, 12, {0}), RUN_A))
    again = index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/part-00000.parquet")
    assert again.status == "indexed" and not again.run_completed
    assert run_row(engine, RUN_A)["finished_at"] == run["finished_at"]


def test_a_retried_run_completes_only_when_its_new_attempt_is_fully_indexed(engine, folder, settings):
    import time

    until = T0 + 11 * W
    parts = {"part-00000.parquet": 12, "part-00001.parquet": 12}
    put_run(engine, folder, RUN_A, T0 - W, until, parts)
    for i, name in enumerate(parts):
        folder.put(f"predictions/{RUN_A}/{name}", prediction_file(series(f"d-{i}", "temp", T0, 12), RUN_A))
        index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/{name}")
    assert run_row(engine, RUN_A)["status"] == "succeeded"
    time.sleep(0.01)
    with engine.begin() as conn:  # `fleetscore run --retry`: claimed again, files rewritten one by one
        conn.execute(db.runs.update().values(status="claimed", attempt=2, claimed_at=clock.now_ms(), finished_at=None))
    folder.put(f"predictions/{RUN_A}/part-00001.parquet", prediction_file(series("d-1", "temp", T0, 12), RUN_A))
    first = index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/part-00001.parquet")
    assert first.status == "indexed" and not first.run_completed  # part-00000 is still attempt 1's
    assert run_row(engine, RUN_A)["status"] == "claimed"
    folder.put(f"predictions/{RUN_A}/part-00000.parquet", prediction_file(series("d-0", "temp", T0, 12), RUN_A))
    last = index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/part-00000.parquet")
    assert last.run_completed and run_row(engine, RUN_A)["status"] == "succeeded"


def test_failed_windows_or_an_unreadable_partition_make_a_partial_run(engine, folder, settings):
    until_a, until_b = T0 + 11 * W, T0 + 23 * W
    put_run(engine, folder, RUN_A, T0 - W, until_a, {"part-00000.parquet": 24})
    put_run(engine, folder, RUN_B, until_a, until_b, {"part-00000.parquet": 12, "part-00001.parquet": 12})
    with engine.begin() as conn:  # a newer watermark never goes back
        conn.execute(db.watermarks.insert().values(name=db.SCORING_WATERMARK, value=until_b, updated_at=0))
    key = f"predictions/{RUN_A}/part-00000.parquet"
    folder.put(key, prediction_file(series("d-1", "temp", T0, 12) + series("d-2", "temp", T0, 12, status="error"),
                                    RUN_A))
    result = index_prediction_file(engine, folder, settings, key)
    assert result.run_completed and result.run_status == "partial"
    run = run_row(engine, RUN_A)
    assert run["status"] == "partial" and run["failures"] == 12
    assert json.loads(run["failure_detail"]) == {"d-2/temp": "model failed"}
    assert watermark(engine) == until_b

    folder.put(f"predictions/{RUN_B}/part-00001.parquet", b"PAR1 truncated")
    folder.put(f"predictions/{RUN_B}/part-00000.parquet", prediction_file(series("d-1", "temp", until_a + W, 12),
                                                                          RUN_B))
    first = index_prediction_file(engine, folder, settings, f"predictions/{RUN_B}/part-00001.parquet")
    assert first.status == "error" and not first.run_completed
    second = index_prediction_file(engine, folder, settings, f"predictions/{RUN_B}/part-00000.parquet")
    assert second.run_completed and second.run_status == "partial"
    run = run_row(engine, RUN_B)
    assert run["status"] == "partial" and run["failures"] == 12 and "unreadable" in run["error"]
    assert "file/part-00001.parquet" in json.loads(run["failure_detail"])


def test_a_terminal_run_is_left_alone(engine, folder, settings):
    put_run(engine, folder, RUN_A, T0 - W, T0 + 11 * W, {"part-00000.parquet": 12}, status="failed")
    key = f"predictions/{RUN_A}/part-00000.parquet"
    folder.put(key, prediction_file(series("d-1", "temp", T0, 12), RUN_A))
    assert not index_prediction_file(engine, folder, settings, key).run_completed
    assert run_row(engine, RUN_A)["status"] == "failed" and watermark(engine) is None


def test_two_indexers_racing_on_the_last_partitions_complete_the_run_once(engine, folder, settings):
    names = [f"part-{i:05d}.parquet" for i in range(6)]
    until = T0 + 11 * W
    put_run(engine, folder, RUN_A, T0 - W, until, {n: 12 for n in names})
    for i, n in enumerate(names):
        folder.put(f"predictions/{RUN_A}/{n}", prediction_file(series(f"d-{i}", "temp", T0, 12, {5}), RUN_A))
    results, errors = [], []
    barrier = threading.Barrier(len(names))

    def index(name: str) -> None:
        barrier.wait()
        for _ in range(20):  # the host retries transient errors (SQLite busy, a key race)
            try:
                results.append(index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/{name}"))
                return
            except Exception as exc:
                if not db.is_transient(exc):
                    errors.append(exc)
                    return
        errors.append(RuntimeError("gave up"))

    threads = [threading.Thread(target=index, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.status for r in results) == ["indexed"] * 6
    assert sum(r.run_completed for r in results) == 1
    assert run_row(engine, RUN_A)["status"] == "succeeded" and watermark(engine) == until
    assert len(rows_of(engine, db.alerts)) == 6


def test_completion_work_is_linear_in_partitions(engine, folder, settings):
    """Each indexed file's completion check sends and reads O(1) values until the run's last file, which reads the
    partitions' rows once; before, every check sent and read every partition's row (quadratic over a run)."""
    import sqlalchemy as sa

    from fleetscore.predictions.completion import complete_run
    from fleetscore.runs.manifest import read_manifest

    parts = 300
    names = [f"part-{i:05d}.parquet" for i in range(parts)]
    until = T0 + 11 * W
    put_run(engine, folder, RUN_A, T0 - W, until, {n: 12 for n in names})
    manifest = read_manifest(folder, RUN_A)
    sent = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "prediction_files" in statement:
            sent.append(len(parameters) if isinstance(parameters, (list, tuple, dict)) else 1)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        statuses = []
        for i, name in enumerate(names):
            with engine.begin() as conn:
                conn.execute(db.prediction_files.insert().values(
                    name=f"predictions/{RUN_A}/{name}", etag=f'"{i}"', run_id=RUN_A, status="indexed", attempts=1,
                    rows=12, anomalies=0, failures=0, windows_no_model=0, indexed_at=clock.now_ms()))
                statuses.append(complete_run(conn, RUN_A, manifest, now=clock.now_ms()))
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert statuses == [None] * (parts - 1) + ["succeeded"]
    assert run_row(engine, RUN_A)["windows"] == 12 * parts
    completion_values = sum(sent) - parts * 11  # minus each insert's own 11 values
    assert completion_values < 12 * parts, completion_values  # quadratic: ~parts²/2 = 45,000
