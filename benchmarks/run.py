"""A whole run on the embedded default vs the engine alone on the same windows, and peak memory.

    python benchmarks/run.py --models 10000 100000 1000000 --windows 12

Each size runs in its own process (its own peak memory) and the figures are printed side by side at the end.
The detector measured is the one-class SVM (rbf), the engine's costliest model kind; the default detector,
change-z, is vectorised over all pairs at once and scores faster, and its export (context rows) uses the same
columnar path.

Builds, in a temporary folder: a SQLite database holding `--windows` closed 5-minute windows for each of
`--models` device+sensor pairs (4 sensors per device), and a model pack of one-class SVMs (rbf, ~100-150
support vectors each; 64 fitted templates shared round-robin across the pairs, so building the fleet
takes seconds, while scoring cost is that of a real fleet). Then, side by side in this one run:

 (a) a whole run, as the timer does it on the local backend: claim → export the closed windows as
     partitions (PARTITION_MODELS pairs each) → score them in the process pool (one worker per core,
     init() once per worker) → write the prediction files;
 (b) the engine alone: every window's features scored by `scoring_job.engine.score` in this process (in calls
     of ENGINE_PAIRS pairs read from the exported partitions, so the benchmark's own memory stays bounded).

Peak memory is the largest resident set of this process and of any pool worker (ru_maxrss).
Last lines: RESULT models=... run_over_engine=... peak_rss_mb=... (one per size)
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetscore.backends.base import SubmitRequest  # noqa: E402
from fleetscore.backends.local import LocalBackend  # noqa: E402
from fleetscore.context import Services  # noqa: E402
from fleetscore.runs.claims import claim_run  # noqa: E402
from fleetscore.runs.export import export_run  # noqa: E402
from fleetscore.settings import load_settings  # noqa: E402
from fleetscore.storage.paths import model_pack_prefix, partition_key  # noqa: E402
from fleetscore.training import publish_pack  # noqa: E402
from scoring_job.engine import score  # noqa: E402
from scoring_job.features import window_features  # noqa: E402
from scoring_job.pack import load_pack, write_pack  # noqa: E402
from scoring_job.train import make_estimator  # noqa: E402

W = 300_000
SLOT = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000 + 300_000  # an hourly :05 slot
SENSORS = ("humidity", "pressure", "temp", "vibration")
TEMPLATES = 64
ENGINE_PAIRS = 100_000
"""Pairs per engine call in (b): one call up to 100,000 pairs (as before), then calls of that size."""


def keys_for(n: int) -> list[tuple[str, str]]:
    return [(f"dev-{i // len(SENSORS):06d}", SENSORS[i % len(SENSORS)]) for i in range(n)]


def window_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """n windows of 5 readings of a noisy level: (n, sum, sumsq, min, max)."""
    values = 20 + rng.standard_normal((n, 5))
    return (np.full(n, 5), values.sum(1), (values * values).sum(1), values.min(1), values.max(1))


def templates(rng: np.random.Generator) -> list:
    """Fitted StandardScaler + OneClassSVM(rbf) on ~2 days of such windows: ~100-150 support vectors."""
    out = []
    for _ in range(TEMPLATES):
        n, s, ss, lo, hi = window_rows(rng, 576)
        frame = pd.DataFrame({"device": "t", "sensor": "t", "window_end": pd.Timestamp(0, tz="UTC"), "n": n,
                              "sum": s, "sumsq": ss, "min": lo, "max": hi})
        feats = window_features(frame)[["mean", "min", "max", "std"]].to_numpy()
        out.append(make_estimator("ocsvm-rbf").fit(feats))
    return out


def build(folder: Path, n_models: int, n_windows: int) -> Services:
    settings = load_settings(FLEETSCORE_SQL_URL=f"sqlite:///{folder / 'fleet.db'}",
                             FLEETSCORE_STORAGE=str(folder / "blobs"), LATE_ARRIVAL_SECONDS=0)
    services = Services(settings)
    rng = np.random.default_rng(0)
    keys = keys_for(n_models)
    until = SLOT - SLOT % W
    ends = until - W * np.arange(n_windows)[::-1]
    raw = services.engine.raw_connection()
    try:
        cur = raw.cursor()
        for start in range(0, n_models, 5000):
            chunk = keys[start:start + 5000]
            n, s, ss, lo, hi = window_rows(rng, len(chunk) * n_windows)
            rows = [(d, sn, int(e), int(n[j]), float(s[j]), float(ss[j]), float(lo[j]), float(hi[j]), 0)
                    for j, ((d, sn), e) in enumerate((k, e) for k in chunk for e in ends)]
            cur.executemany("INSERT INTO windows (device, sensor, window_end, n, sum, sumsq, min, max, updated_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        raw.commit()
    finally:
        raw.close()
    fitted = templates(rng)
    pack_dir = folder / "pack"
    write_pack({k: fitted[i % TEMPLATES] for i, k in enumerate(keys)}, pack_dir, version="vbench")
    publish_pack(services.store, pack_dir, "vbench", activate=True)
    return services


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def engine_alone(services: Services, manifest, run_id: str) -> tuple[float, int]:
    """(seconds in `score`, windows scored): the run's partitions read back in groups of ENGINE_PAIRS pairs,
    only the engine timed."""
    pack = load_pack(services.store.local_path(model_pack_prefix("vbench")))
    seconds, scored, group, pairs = 0.0, 0, [], 0
    for i, part in enumerate(manifest.partitions):
        group.append(part.name)
        pairs += part.pairs
        if pairs < ENGINE_PAIRS and i + 1 < len(manifest.partitions):
            continue
        frame = pd.concat([pq.read_table(services.store.local_path(partition_key(run_id, n))).to_pandas()
                           for n in group], ignore_index=True).drop(columns=["context"])
        feats = window_features(frame)
        t0 = time.perf_counter()
        out = score(feats, pack, run_id=run_id).predictions
        seconds += time.perf_counter() - t0
        assert (out["status"] == "ok").all()
        scored += len(out)
        group, pairs = [], 0
    return seconds, scored


def one_size(models: int, windows: int, partition_models: int) -> None:
    with tempfile.TemporaryDirectory(prefix="fleetscore-bench-run-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        services = build(folder, models, windows)
        print(f"built {models:,} models x {windows} windows in {time.perf_counter() - t0:.1f} s "
              f"({os.cpu_count()} cores)", flush=True)
        settings = services.settings.model_copy(update={"partition_models": partition_models})
        services.settings = settings

        # (a) the whole run: claim, export, score in the pool, write predictions
        t0 = time.perf_counter()
        claim = claim_run(services.engine, SLOT, window_ms=W, late_ms=0, max_lookback_ms=windows * W,
                          trigger="bench", backend="local")
        request = SubmitRequest.for_run(claim.run_id, SLOT, "vbench")
        backend = LocalBackend(services.settings, services.store)
        feed = backend.open_feed(request)  # as start_run does: score partitions while exporting
        manifest = export_run(services.engine, services.store, claim, model_version="vbench", window_ms=W,
                              partition_models=partition_models, on_partition=feed.add)
        t_export = time.perf_counter() - t0
        backend.submit(request)
        t_run = time.perf_counter() - t0
        scored = int(backend.results["rows"].sum())
        assert scored == models * windows == manifest.windows, (scored, manifest.windows)

        # (b) the engine alone on the same windows
        t_engine, engine_scored = engine_alone(services, manifest, claim.run_id)
        assert engine_scored == scored
        services.close()

    print(f"whole run     {t_run:8.2f} s   (export, overlapped with scoring: {t_export:.2f} s; "
          f"{len(manifest.partitions)} partitions, "
          f"{settings.workers} workers)   {scored / t_run:>12,.0f} windows/s")
    print(f"engine alone  {t_engine:8.2f} s   (one process)                          "
          f"{scored / t_engine:>12,.0f} windows/s")
    print(f"RESULT models={models} run_over_engine={t_run / t_engine:.2f} peak_rss_mb={peak_rss_mb():.0f} "
          f"run_s={t_run:.2f} engine_s={t_engine:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, nargs="+", default=[10_000])
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--partition-models", type=int, default=2000)
    args = parser.parse_args()
    if len(args.models) == 1:
        one_size(args.models[0], args.windows, args.partition_models)
        return
    results = []
    for models in args.models:  # each size in its own process: its own peak memory
        print(f"--- {models:,} models", flush=True)
        done = subprocess.run([sys.executable, __file__, "--models", str(models), "--windows", str(args.windows),
                               "--partition-models", str(args.partition_models)], capture_output=True, text=True)
        print(done.stdout.rstrip(), done.stderr[-2000:] if done.returncode else "", flush=True)
        found = re.search(r"^RESULT .*$", done.stdout, re.M)
        results.append(found.group(0) if found else f"RESULT models={models} failed (exit {done.returncode})")
    print("--- side by side (one-class SVM rbf engine, "
          f"{args.windows} windows per pair, {args.partition_models} pairs per partition)")
    for line in results:
        print(line)


if __name__ == "__main__":
    main()
