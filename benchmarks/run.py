"""A whole run on the embedded default vs the engine alone on the same windows, and peak memory.

    python benchmarks/run.py --models 10000 100000 1000000 --windows 12 [--algorithm change-z|ocsvm-rbf]

Each size is built, then run, in processes of their own (the run's own peak memory) and the figures are printed
side by side at the end, with the detector measured: `--algorithm`, by default the library's (MODEL_ALGORITHM's
default, change-z).

Builds, in a temporary folder: a SQLite database holding `--windows` closed 5-minute windows for each of
`--models` device+sensor pairs (4 sensors per device) and a model pack of 64 fitted templates shared
round-robin across the pairs (building the fleet takes seconds to minutes; scoring cost is that of a real fleet):

- change-z: eight numbers per model in the manifest, thresholds calibrated on each template's training windows;
  each pair also has `change.LOOKBACK_WINDOWS` (24) windows before the run's range in the database, of which the
  export sends the 6 its baseline reads as context rows (`scoring_job.pack.lookback`: announce sensors, which this
  fleet has none of, 24), 18 rows per pair at 12 windows;
- ocsvm-rbf: StandardScaler + OneClassSVM (~100-150 support vectors each, ~4.8 KB per model in the pack's
  arrays). Every pool worker loads the whole pack, so at 1,000,000 models each worker would hold ~4.8 GB: the
  SVM is measured up to 100,000 models (the pack format is not changed here).

Then, side by side in this one run:

 (a) a whole run, as the timer does it on the local backend: claim → export the closed windows as
     partitions (PARTITION_MODELS pairs each) → score them in the process pool (one worker per core,
     init() once per worker) → write the prediction files;
 (b) the engine alone: the scoring job's work per window in this process, timed: the pack's features
     (`score.partition_features`, context rows included) and `scoring_job.engine.score`, one call per
     exported partition, as the pool scores them (`--engine-pairs N`: calls of N pairs' partitions instead);
     reading the Parquet files is not timed.

Peak memory is the largest resident set of the run's process and of any pool worker (ru_maxrss): `run_peak_rss_mb`
at the end of (a), `peak_rss_mb` after (b) as well; `run_peak_total_pss_mb` is the run's process and its workers
together during (a) (the largest sum of their PSS, sampled every 0.5 s). Building the fleet is not counted.
Last lines: RESULT algorithm=... models=... run_over_engine=... peak_rss_mb=... (one per size)
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
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
from fleetscore.settings import Settings, load_settings  # noqa: E402
from fleetscore.storage.paths import model_pack_prefix, partition_key  # noqa: E402
from fleetscore.training import publish_pack  # noqa: E402
from scoring_job import change  # noqa: E402
from scoring_job.change import model_features  # noqa: E402
from scoring_job.engine import score  # noqa: E402
from scoring_job.features import window_features  # noqa: E402
from scoring_job.pack import load_pack, lookback, training_summary, write_pack  # noqa: E402
from scoring_job.score import partition_features, read_partition  # noqa: E402
from scoring_job.train import make_estimator  # noqa: E402

W = 300_000
SLOT = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000 + 300_000  # an hourly :05 slot
SENSORS = ("humidity", "pressure", "temp", "vibration")
TEMPLATES = 64
ALGORITHMS = ("change-z", "ocsvm-rbf")
DEFAULT_ALGORITHM = Settings.model_fields["model_algorithm"].default
"""The library's default detector (MODEL_ALGORITHM): what the benchmark measures unless told otherwise."""


def keys_for(n: int) -> list[tuple[str, str]]:
    return [(f"dev-{i // len(SENSORS):06d}", SENSORS[i % len(SENSORS)]) for i in range(n)]


def window_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """n windows of 5 readings of a noisy level: (n, sum, sumsq, min, max)."""
    values = 20 + rng.standard_normal((n, 5))
    return (np.full(n, 5), values.sum(1), (values * values).sum(1), values.min(1), values.max(1))


def templates(rng: np.random.Generator, algorithm: str) -> tuple[list, list[dict]]:
    """64 fitted `algorithm` models on ~2 days of such windows each, and each one's training record (change-z:
    its calibrated thresholds and score quantiles; the SVM: none, threshold 0 as before)."""
    out, records = [], []
    for _ in range(TEMPLATES):
        n, s, ss, lo, hi = window_rows(rng, 576)
        frame = pd.DataFrame({"device": "t", "sensor": "t", "window_end": pd.to_datetime(
            np.arange(576) * W, unit="ms", utc=True), "n": n, "sum": s, "sumsq": ss, "min": lo, "max": hi})
        if algorithm == "change-z":
            feats = model_features(frame, change.FEATURES, W).dropna(subset=list(change.FEATURES))
            est = make_estimator("change-z").fit(feats[list(change.FEATURES)].to_numpy())
            records.append(training_summary({("t", "t"): est}, feats, change.FEATURES)[("t", "t")])
        else:
            est = make_estimator("ocsvm-rbf").fit(window_features(frame)[["mean", "min", "max", "std"]].to_numpy())
            records.append({})
        out.append(est)
    return out, records


def services_in(folder: Path) -> Services:
    """The benchmark fleet's services: its SQLite file and folder store in `folder`."""
    return Services(load_settings(FLEETSCORE_SQL_URL=f"sqlite:///{folder / 'fleet.db'}",
                                  FLEETSCORE_STORAGE=str(folder / "blobs"), LATE_ARRIVAL_SECONDS=0))


def build(folder: Path, n_models: int, n_windows: int, algorithm: str) -> None:
    """The database (`n_windows` scored windows per pair, plus the change-z lookback) and the active pack."""
    services = services_in(folder)
    rng = np.random.default_rng(0)
    keys = keys_for(n_models)
    until = SLOT - SLOT % W
    context = change.LOOKBACK_WINDOWS if algorithm == "change-z" else 0
    ends = until - W * np.arange(n_windows + context)[::-1]
    raw = services.engine.raw_connection()
    try:
        cur = raw.cursor()
        for start in range(0, n_models, 5000):
            chunk = keys[start:start + 5000]
            n, s, ss, lo, hi = window_rows(rng, len(chunk) * len(ends))
            rows = [(d, sn, int(e), int(n[j]), float(s[j]), float(ss[j]), float(lo[j]), float(hi[j]), 0)
                    for j, ((d, sn), e) in enumerate((k, e) for k in chunk for e in ends)]
            cur.executemany("INSERT INTO windows (device, sensor, window_end, n, sum, sumsq, min, max, updated_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        raw.commit()
    finally:
        raw.close()
    fitted, records = templates(rng, algorithm)
    pack_dir = folder / "pack"
    features = change.FEATURES if algorithm == "change-z" else ("mean", "min", "max", "std")
    write_pack({k: fitted[i % TEMPLATES] for i, k in enumerate(keys)}, pack_dir, version="vbench",
               features=features, training={k: records[i % TEMPLATES] for i, k in enumerate(keys)})
    publish_pack(services.store, pack_dir, "vbench", activate=True)
    services.close()


def peak_rss_mb() -> float:
    """The largest resident set (MB) of this process and of any of its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


class TreeMemory:
    """The memory of this process and all its descendants together, sampled every `interval` seconds while in the
    `with` block: the sum of their proportional set sizes (PSS: a page shared by k processes counts 1/k in each, so
    forked workers' shared pages count once). `peak_mb` is the largest sum seen; 0 where /proc has no smaps_rollup."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, sum(_pss_kb(pid) for pid in _tree(os.getpid())) / 1024)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux: /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def engine_alone(services: Services, manifest, run_id: str, engine_pairs: int = 0) -> tuple[float, int]:
    """(seconds in features + `score`, windows scored): the run's partitions read back one at a time (or in groups
    of `engine_pairs` pairs), only the features and the engine timed."""
    pack = load_pack(services.store.local_path(model_pack_prefix("vbench")))
    seconds, scored, group, pairs = 0.0, 0, [], 0
    for i, part in enumerate(manifest.partitions):
        group.append(part.name)
        pairs += part.pairs
        if pairs < engine_pairs and i + 1 < len(manifest.partitions):
            continue
        frame = pd.concat([read_partition(str(services.store.local_path(partition_key(run_id, n))))
                           for n in group], ignore_index=True)
        t0 = time.perf_counter()
        out = score(partition_features(frame, pack), pack, run_id=run_id).predictions
        seconds += time.perf_counter() - t0
        assert out["status"].isin(("ok", "settling")).all()
        scored += len(out)
        group, pairs = [], 0
    return seconds, scored


def one_size(folder: Path, models: int, windows: int, partition_models: int, algorithm: str,
             engine_pairs: int = 0) -> None:
    """(a) and (b) on the fleet built in `folder`; prints the figures and the RESULT line."""
    services = services_in(folder)
    settings = services.settings.model_copy(update={"partition_models": partition_models})
    services.settings = settings
    context = lookback(load_pack(services.store.local_path(model_pack_prefix("vbench"))).manifest)

    # (a) the whole run: claim, export, score in the pool, write predictions
    t0 = time.perf_counter()
    claim = claim_run(services.engine, SLOT, window_ms=W, late_ms=0, max_lookback_ms=windows * W,
                      trigger="bench", backend="local")
    request = SubmitRequest.for_run(claim.run_id, SLOT, "vbench")
    backend = LocalBackend(services.settings, services.store)
    feed = backend.open_feed(request)  # as start_run does: score partitions while exporting
    with TreeMemory() as memory:  # started after the pool chose its start method (fork: one thread only)
        manifest = export_run(services.engine, services.store, claim, model_version="vbench", window_ms=W,
                              partition_models=partition_models, on_partition=feed.add, lookback=context,
                              streams=settings.export_streams)
        t_export = time.perf_counter() - t0
        backend.submit(request)
        t_run = time.perf_counter() - t0
    scored = int(backend.results["rows"].sum())
    assert scored == models * windows == manifest.windows, (scored, manifest.windows)
    run_rss = peak_rss_mb()

    # (b) the engine alone on the same windows
    t_engine, engine_scored = engine_alone(services, manifest, claim.run_id, engine_pairs)
    assert engine_scored == scored
    services.close()

    print(f"whole run     {t_run:8.2f} s   (export, overlapped with scoring: {t_export:.2f} s; "
          f"{len(manifest.partitions)} partitions, {settings.export_streams} export streams, "
          f"{settings.workers} workers)   {scored / t_run:>12,.0f} windows/s")
    calls = f"calls of {engine_pairs:,} pairs" if engine_pairs else "one call per partition"
    print(f"engine alone  {t_engine:8.2f} s   (one process, {calls})                "
          f"{scored / t_engine:>12,.0f} windows/s")
    print(f"RESULT algorithm={algorithm} models={models} run_over_engine={t_run / t_engine:.2f} "
          f"peak_rss_mb={peak_rss_mb():.0f} run_peak_rss_mb={run_rss:.0f} run_peak_total_pss_mb={memory.peak_mb:.0f} "
          f"export_s={t_export:.2f} "
          f"run_s={t_run:.2f} engine_s={t_engine:.2f}", flush=True)


def stage(args: argparse.Namespace, name: str, folder: str, models: int) -> subprocess.CompletedProcess:
    """One stage of one size in its own process (its own peak memory), its output echoed."""
    done = subprocess.run([sys.executable, __file__, "--stage", name, "--folder", folder, "--models", str(models),
                           "--windows", str(args.windows), "--partition-models", str(args.partition_models),
                           "--algorithm", args.algorithm, "--engine-pairs", str(args.engine_pairs)],
                          capture_output=True, text=True)
    print(done.stdout.rstrip(), done.stderr[-2000:] if done.returncode else "", flush=True)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, nargs="+", default=[10_000])
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--partition-models", type=int, default=2000)
    parser.add_argument("--algorithm", choices=ALGORITHMS, default=DEFAULT_ALGORITHM,
                        help=f"the detector measured (default: the library's, {DEFAULT_ALGORITHM})")
    parser.add_argument("--engine-pairs", type=int, default=0,
                        help="pairs per engine call in (b) (default 0: one call per partition)")
    parser.add_argument("--stage", choices=("build", "run"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "build":
        t0 = time.perf_counter()
        build(Path(args.folder), args.models[0], args.windows, args.algorithm)
        print(f"built {args.models[0]:,} {args.algorithm} models x {args.windows} windows in "
              f"{time.perf_counter() - t0:.1f} s ({os.cpu_count()} cores; peak {peak_rss_mb():.0f} MB, "
              "not counted)", flush=True)
        return
    if args.stage == "run":
        one_size(Path(args.folder), args.models[0], args.windows, args.partition_models, args.algorithm,
                 args.engine_pairs)
        return
    results = []
    for models in args.models:  # each size built, then run, in processes of its own: the run's own peak memory
        print(f"--- {models:,} models", flush=True)
        with tempfile.TemporaryDirectory(prefix="fleetscore-bench-run-") as tmp:
            done = stage(args, "build", tmp, models)
            if not done.returncode:
                done = stage(args, "run", tmp, models)
        found = re.search(r"^RESULT .*$", done.stdout, re.M)
        results.append(found.group(0) if found else f"RESULT models={models} failed (exit {done.returncode})")
    print(f"--- side by side ({args.algorithm} detector, "
          f"{args.windows} windows per pair, {args.partition_models} pairs per partition)")
    for line in results:
        print(line)


if __name__ == "__main__":
    main()
