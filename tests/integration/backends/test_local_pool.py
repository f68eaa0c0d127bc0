"""The local backend's workers start without importing again what the parent had loaded (forkserver mode)."""

from __future__ import annotations

import os
import subprocess
import sys

from fleetscore.backends.local import forkserver_preload
from tests.helpers import REPO

SCRIPT = """
import threading, time
import fleetscore.cli.main  # what the `fleetscore` script imports: the whole CLI
from concurrent.futures import ProcessPoolExecutor
from fleetscore.backends import local

def loaded():
    import sys
    return "fleetscore.cli.main" in sys.modules

if __name__ == "__main__":
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # a second thread: forkserver mode
    ctx = local._pool_context()
    assert type(ctx).__name__ == "ForkServerContext", ctx
    for _ in range(3):
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            assert pool.submit(loaded).result()
"""


def test_forkserver_workers_do_not_import_the_main_scripts_modules_again(tmp_path):
    script = tmp_path / "main.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imports = [line for line in done.stderr.splitlines() if line.rstrip().endswith("| fleetscore.cli.main")]
    assert len(imports) == 2  # the parent and the forkserver, not once more per worker (three workers here)


def test_the_preload_is_this_module_and_the_project_modules_loaded():
    preload = forkserver_preload()
    assert preload[0] == "fleetscore.backends.local"
    assert "scoring_job.score" in preload and "fleetscore.backends.local" in preload
    assert all(name.split(".")[0] in ("fleetscore", "scoring_job", "functions", "function_app") for name in preload)
    assert not any(name.startswith(("tests", "pytest", "numpy")) for name in preload)


def test_a_partition_that_cannot_be_scored_keeps_its_reason(tmp_path):
    """Azure ML's run() leaves a failed partition out (a failed item); the local pool keeps its reason."""
    import numpy as np
    import pandas as pd
    from sklearn.svm import OneClassSVM

    from fleetscore.backends.local import score_partitions
    from scoring_job.pack import write_pack

    rng = np.random.default_rng(3)
    write_pack({("d-1", "temp"): OneClassSVM(nu=0.1).fit(rng.normal(20.0, 0.5, size=(40, 4)))}, tmp_path / "pack",
               version="v1")
    values = rng.normal(20.0, 1.0, size=10)
    pd.DataFrame([{"device": "d-1", "sensor": "temp", "window_end": pd.Timestamp("2026-11-23T10:05Z"), "n": 10,
                   "sum": float(values.sum()), "sumsq": float((values**2).sum()), "min": float(values.min()),
                   "max": float(values.max())}]).to_parquet(tmp_path / "part-00000.parquet", index=False)
    (tmp_path / "part-00001.parquet").write_bytes(b"not parquet")
    results = score_partitions([tmp_path / "part-00000.parquet", tmp_path / "part-00001.parquet"], tmp_path / "pack",
                               tmp_path / "out", "r1", workers=1)
    by_name = results.set_index("partition")
    assert by_name.loc["part-00000.parquet", "status"] == "ok"
    assert by_name.loc["part-00001.parquet", "status"] == "error" and by_name.loc["part-00001.parquet", "error"]
