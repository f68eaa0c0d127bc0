"""The Azure ML code snapshot in tests: a copy of the scoring_job folder alone, and fresh processes that run it
unable to import the project's packages (as on a cluster, where only that folder is uploaded)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import REPO

SCORING_DIR = REPO / "scoring_job"

#: Prepended to every snapshot script: importing fleetscore, scoring_job, functions or function_app fails.
SNAPSHOT_ONLY = textwrap.dedent("""
    import importlib.abc, sys

    class SnapshotOnly(importlib.abc.MetaPathFinder):  # Azure ML uploads the scoring_job folder alone
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("fleetscore", "scoring_job", "functions", "function_app"):
                raise ImportError(f"{name} is not part of the Azure ML code snapshot")
            return None

    sys.meta_path.insert(0, SnapshotOnly())
""")

ENTRY_DRIVER = SNAPSHOT_ONLY + textwrap.dedent("""
    import json
    spec = json.loads(sys.argv[1])
    sys.path.insert(0, spec["code"])
    sys.argv = ["score.py", *spec["argv"]]
    import score
    score.init()
    out = []
    for batch in spec["mini_batches"]:
        result = score.run(batch)
        out.append({"columns": list(result.columns), "dtypes": [str(t) for t in result.dtypes],
                    "rows": json.loads(result.to_json(orient="records"))})
    print("DRIVER-RESULT " + json.dumps(out))
""")


def copy_snapshot(dst: Path) -> Path:
    """The scoring_job folder copied to ``dst`` (another name, as Azure ML mounts it), without caches."""
    shutil.copytree(SCORING_DIR, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def run_script(script: str, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``script`` (after :data:`SNAPSHOT_ONLY`) in a fresh interpreter without PYTHONPATH; asserts it succeeded."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def drive(code: Path, argv: list[str], mini_batches: list[list[str]]) -> list[dict]:
    """score.py from the snapshot ``code`` as the parallel runners drive it: init() with ``argv`` among the
    platform's, then run() per mini-batch; per batch its result's columns, dtypes and rows."""
    spec = {"code": str(code), "argv": argv, "mini_batches": mini_batches}
    done = run_script(ENTRY_DRIVER, [json.dumps(spec)], cwd=code)
    line = next(x for x in done.stdout.splitlines() if x.startswith("DRIVER-RESULT "))
    return json.loads(line.removeprefix("DRIVER-RESULT "))
