"""A whole run on the embedded default vs the engine alone on the same windows, and peak memory.

    python benchmarks/run.py --models 10000 --windows 12      (and --models 100000)

Builds, in a temporary folder: a SQLite database holding `--windows` closed 5-minute windows for each of
`--models` device+sensor pairs (4 sensors per device), and a model pack of one-class SVMs (rbf, ~100-150
support vectors each; 64 fitted templates shared round-robin across the pairs, so building the fleet
takes seconds, while scoring cost is that of a real fleet). Then, side by side in this one run:

 (a) a whole run, as the timer does it on the local backend: claim → export the closed windows as
     partitions (PARTITION_MODELS pairs each) → score them in the process pool (one worker per core,
     init() once per worker) → write the prediction files;
 (b) the engine alone: every window's features scored by `scoring_job.engine.score` in this process.

Peak memory is the largest resident set of this process and of any pool worker (ru_maxrss).
Last line: RESULT run_over_engine=... peak_rss_mb=...
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetscore.backends.base import SubmitRequest  # noqa: E402
from fleetscore.backends.local import LocalBackend  # noqa: E402
from fleetscore.context import Services  # noqa: E402
from fleetscore.runs.claims import claim_run  # noqa: E402
from fleetscore.runs.export import export_run  # noqa: E402
from fleetscore.settings import load_settings  # noqa: E402
from fleetscore.storage.paths import model_pack_prefix  # noqa: E402
from fleetscore.training import load_windows, publish_pack  # noqa: E402
from scoring_job.engine import score  # noqa: E402
from scoring_job.features import window_features  # noqa: E402
from scoring_job.pack import load_pack, write_pack  # noqa: E402
from scoring_job.train import make_estimator  # noqa: E402

W = 300_000
SLOT = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000 + 300_000  # an hourly :05 slot
SENSORS = ("humidity", "pressure", "temp", "vibration")
TEMPLATES = 64


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--partition-models", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fleetscore-bench-run-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        services = build(folder, args.models, args.windows)
        print(f"built {args.models:,} models x {args.windows} windows in {time.perf_counter() - t0:.1f} s "
              f"({os.cpu_count()} cores)")
        settings = services.settings.model_copy(update={"partition_models": args.partition_models})
        services.settings = settings

        # (a) the whole run: claim, export, score in the pool, write predictions
        t0 = time.perf_counter()
        claim = claim_run(services.engine, SLOT, window_ms=W, late_ms=0, max_lookback_ms=args.windows * W,
                          trigger="bench", backend="local")
        request = SubmitRequest.for_run(claim.run_id, SLOT, "vbench")
        backend = LocalBackend(services.settings, services.store)
        feed = backend.open_feed(request)  # as start_run does: score partitions while exporting
        manifest = export_run(services.engine, services.store, claim, model_version="vbench", window_ms=W,
                              partition_models=args.partition_models,
                              on_partition=feed.add)
        t_export = time.perf_counter() - t0
        backend.submit(request)
        t_run = time.perf_counter() - t0
        scored = int(backend.results["rows"].sum())
        assert scored == args.models * args.windows == manifest.windows, (scored, manifest.windows)

        # (b) the engine alone on the same windows
        feats = window_features(load_windows(services.engine, claim.window_from, claim.window_until))
        pack = load_pack(services.store.local_path(model_pack_prefix("vbench")))
        t0 = time.perf_counter()
        out = score(feats, pack, run_id=claim.run_id).predictions
        t_engine = time.perf_counter() - t0
        assert len(out) == scored and (out["status"] == "ok").all()
        services.close()

    print(f"whole run     {t_run:8.2f} s   (export, overlapped with scoring: {t_export:.2f} s; "
          f"{len(manifest.partitions)} partitions, "
          f"{settings.workers} workers)   {scored / t_run:>12,.0f} windows/s")
    print(f"engine alone  {t_engine:8.2f} s   (one process)                          "
          f"{scored / t_engine:>12,.0f} windows/s")
    print(f"RESULT run_over_engine={t_run / t_engine:.2f} peak_rss_mb={peak_rss_mb():.0f}")


if __name__ == "__main__":
    main()
