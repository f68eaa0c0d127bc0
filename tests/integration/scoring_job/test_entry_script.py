"""scoring_job/score.py driven the way Azure ML drives it: a fresh process imports the entry script from the code
snapshot (the scoring_job folder alone), init() reads its arguments among the platform's from sys.argv, then
run() gets mini-batches of partition paths."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from scoring_job.contract import PREDICTION_SCHEMA, RESULT_COLUMNS
from scoring_job.pack import write_pack
from tests.helpers.snapshot import copy_snapshot, drive


def window_rows(rng, device, sensor, windows, level, bad_from=None):
    rows = []
    end = pd.Timestamp("2026-11-23T10:05:00Z")
    for k in range(windows):
        v = rng.normal(level, 1.0, size=12)
        if bad_from is not None and k >= bad_from:
            v = v + 15.0
        rows.append({"device": device, "sensor": sensor, "window_end": end + pd.Timedelta(minutes=5 * k),
                     "n": 12, "sum": float(v.sum()), "sumsq": float((v**2).sum()), "min": float(v.min()),
                     "max": float(v.max())})
    return rows


def train_features(rng, level, n=200):
    v = rng.normal(level, 1.0, size=(n, 12))
    return np.column_stack([v.mean(1), v.min(1), v.max(1), v.std(1, ddof=1)])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("entry")
    rng = np.random.default_rng(21)
    models = {}
    for i in range(6):
        X = train_features(rng, 20.0 + i)
        models[(f"dev-{i:02d}", "temp")] = make_pipeline(StandardScaler(), OneClassSVM(nu=0.05, gamma="scale")).fit(X)
    models[("dev-06", "temp")] = IsolationForest(n_estimators=20, random_state=0).fit(train_features(rng, 26.0))
    models[("dev-07", "temp")] = OneClassSVM(nu=0.1).fit(train_features(rng, 27.0)[:, :3])  # broken: 3 features
    write_pack(models, tmp / "models" / "v3", version="v3")
    data = tmp / "data" / "run-1"
    data.mkdir(parents=True)
    layout = {0: ["dev-00", "dev-01"], 1: ["dev-02", "dev-03", "dev-99"], 2: ["dev-04", "dev-05", "dev-06"],
              3: ["dev-07", "dev-00"]}
    for part, devices in layout.items():
        rows = []
        for d in devices:
            i = int(d.split("-")[1])
            rows += window_rows(rng, d, "temp", 12, 20.0 + min(i, 7), bad_from=9)
        frame = pd.DataFrame(rows).sample(frac=1.0, random_state=part)  # any row order in the partition
        frame.to_parquet(data / f"part-{part:05d}.parquet", index=False)
    (data / "part-00004.parquet").write_bytes(b"PAR1 this is not parquet")
    (data / "manifest.json").write_text('{"run_id": "run-1"}')  # the run manifest sits beside the partitions
    code = copy_snapshot(tmp / "snapshot")
    return {"tmp": tmp, "models": models, "pack": tmp / "models" / "v3", "data": data, "code": code}


PLATFORM_ARGS = ["--client_sdk_version", "1.61.0", "--scoring_module_name", "score.py", "--mini_batch_size", "2",
                 "--error_threshold", "-1", "--output_action", "append_row", "--logging_level", "INFO",
                 "--run_invocation_timeout", "600", "--process_count_per_node", "2", "--input_fds_0", "partitions"]


def job_batches(fleet, out: Path, dtype: str = "float64") -> tuple[list[list[str]], list[dict]]:
    """The v2 runner's view: every file of the input folder (manifest included) in mini-batches; run()'s results."""
    files = sorted(str(p) for p in fleet["data"].iterdir())
    argv = [*PLATFORM_ARGS[:6], "--model_pack", str(fleet["pack"]), *PLATFORM_ARGS[6:], "--output", str(out),
            "--run_id", "run-1", "--dtype", dtype, "--unknown_flag_from_a_newer_runner", "x"]
    mini_batches = [files[:2], files[2:]]
    batches = drive(fleet["code"], argv, mini_batches)
    for b in batches:
        assert b["columns"] == list(RESULT_COLUMNS)
    return mini_batches, batches


def run_job(fleet, out: Path, dtype: str = "float64") -> list[dict]:
    return [r for b in job_batches(fleet, out, dtype)[1] for r in b["rows"]]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_the_entry_script_scores_partitions_like_azure_ml(fleet):
    out = fleet["tmp"] / "out-a"
    rows = {r["partition"]: r for r in run_job(fleet, out)}
    # the unreadable part-00004 has no row (a failed item); the manifest is skipped, not scored, not failed
    assert sorted(rows) == ["manifest.json", *(f"part-{i:05d}.parquet" for i in range(4))]
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.parquet" for i in range(4)]  # no temp files
    assert rows["manifest.json"]["status"] == "skipped" and rows["manifest.json"]["rows"] == 0

    r0, r1, r2, r3 = (rows[f"part-{i:05d}.parquet"] for i in range(4))
    assert (r0["status"], r0["rows"], r0["models"], r0["failures"], r0["error"]) == ("ok", 24, 2, 0, None)
    assert r0["anomalies"] >= 6  # the last 3 windows of each pair are shifted by 15 sd
    assert (r1["status"], r1["windows_no_model"], r1["models"]) == ("ok", 12, 2)
    assert r2["status"] == "ok" and r2["models"] == 3
    assert r3["status"] == "partial" and r3["failures"] == 1 and r3["models"] == 2
    detail = json.loads(r3["failure_detail"])
    assert list(detail) == ["dev-07/temp"] and "expects 3 features" in detail["dev-07/temp"]

    for name in rows:
        if name == "manifest.json":
            continue
        path = out / name
        assert pq.read_schema(path).equals(PREDICTION_SCHEMA, check_metadata=False)
        pred = pd.read_parquet(path)
        keys = list(zip(pred["device"], pred["sensor"], pred["window_end"], strict=True))
        assert keys == sorted(keys) and (pred["run_id"] == "run-1").all() and (pred["model_version"] == "v3").all()
        assert pred["window_end"].dtype == "datetime64[ms, UTC]"
        for (d, s), est in fleet["models"].items():
            mine = pred[(pred["device"] == d) & (pred["sensor"] == s)]
            if mine.empty or d == "dev-07":
                continue
            X = mine[["mean", "min", "max", "std"]].to_numpy()
            np.testing.assert_allclose(-mine["score"].to_numpy(), est.decision_function(X), rtol=1e-9, atol=1e-10)
            assert (mine["is_anomaly"].to_numpy() == (est.predict(X) == -1)).all()
            assert mine["is_anomaly"].to_numpy()[-3:].all()
    p1 = pd.read_parquet(out / "part-00001.parquet")
    none = p1[p1["device"] == "dev-99"]
    assert (none["status"] == "no_model").all() and none["score"].isna().all() and none["error"].isna().all()
    p3 = pd.read_parquet(out / "part-00003.parquet")
    broken = p3[p3["device"] == "dev-07"]
    assert (broken["status"] == "error").all() and broken["error"].str.contains("expects 3 features").all()


def test_rerunning_writes_byte_identical_files_and_float32_keeps_the_labels(fleet):
    first, again, f32 = (fleet["tmp"] / n for n in ("out-b", "out-c", "out-d"))
    rows_first = run_job(fleet, first)
    rows_again = run_job(fleet, again)
    assert rows_first == rows_again
    assert digests(first) == digests(again)
    run_job(fleet, again)  # over existing files, in place
    assert digests(first) == digests(again)
    run_job(fleet, f32, dtype="float32")
    for name in digests(first):
        a, b = pd.read_parquet(first / name), pd.read_parquet(f32 / name)
        assert (a["is_anomaly"] == b["is_anomaly"]).all()
        np.testing.assert_allclose(a["score"], b["score"], rtol=0, atol=1e-3)


def test_init_needs_its_own_arguments_and_run_needs_init(fleet, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(fleet["code"])!r})
        import score
        try:
            score.run(["x.parquet"])
        except RuntimeError as exc:
            print("RUN-BEFORE-INIT", exc)
        sys.argv = ["score.py", "--output", {str(tmp_path)!r}]
        try:
            score.init()
        except SystemExit as exc:
            print("INIT-EXIT", exc.code)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "RUN-BEFORE-INIT" in done.stdout and "INIT-EXIT 2" in done.stdout, done.stderr
    assert "--model_pack" in done.stderr


def test_failures_count_as_the_parallel_runners_count_them(fleet):
    """ParallelRunStep and the v2 parallel job count an item without a result row as failed, and a mini-batch that
    returns fewer rows than items as a failed mini-batch: a bad partition must be one, a bad model must not."""
    mini_batches, batches = job_batches(fleet, fleet["tmp"] / "out-f")
    failed_items = [len(items) - len(b["rows"]) for items, b in zip(mini_batches, batches, strict=True)]
    assert failed_items == [0, 1]  # [manifest, part-0] all processed; part-00004 (unreadable) failed
    rows = [r for b in batches for r in b["rows"]]
    assert "part-00004.parquet" not in {r["partition"] for r in rows}
    assert any(r["partition"] == "part-00003.parquet" and r["status"] == "partial" for r in rows)  # the bad model


def test_score_mini_batch_keeps_the_failed_partitions_reason(fleet, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(fleet["code"])!r})
        import score
        score.init(["--model_pack", {str(fleet["pack"])!r}, "--output", {str(tmp_path)!r}])
        items = [{str(fleet["data"] / "part-00004.parquet")!r}, {str(fleet["data"] / "manifest.json")!r}]
        print("ALL", score.score_mini_batch(items)[["partition", "status"]].to_dict("records"))
        print("RUN", score.run(items)[["partition", "status"]].to_dict("records"))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("ALL [{'partition': 'part-00004.parquet', 'status': 'error'}, "
            "{'partition': 'manifest.json', 'status': 'skipped'}]") in done.stdout
    assert "RUN [{'partition': 'manifest.json', 'status': 'skipped'}]" in done.stdout
    assert "partition part-00004.parquet failed, no result row" in done.stderr
