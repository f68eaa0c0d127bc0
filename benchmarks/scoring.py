"""Scoring benchmark: the engine against the original reference's per-model loop and preloaded scikit-learn.

    python benchmarks/scoring.py --models 10000 --windows 12      (and --windows 288)

Builds a fleet like a real one: per (device, sensor) a StandardScaler + OneClassSVM(rbf, nu=0.05,
gamma="scale") fitted on a week of 5-minute windows (2016 windows of 4 features: mean, min, max, std), which
gives ~100-150 support vectors per model. The fitted fleet is cached under ~/.cache/fleetscore-bench (the
benchmark's own objects, pickled by itself; never in the repository) so later runs skip the fitting.

Prints, side by side and measured in this one run:
 (a) the original reference's way: per model, unpickle its own file (written to a temp dir), filter its rows from
     one shared DataFrame with a pandas boolean mask, predict;
 (b) preloaded scikit-learn: one groupby, then one decision_function per model;
 (c) the engine, float64; (d) the engine, float32 with float64 recheck near 0;
 (e) the exp bound: kernel evaluations / this machine's numpy float64 exp rate (measured now);
 (f) loading the pack (every SHA-256 verified) vs unpickling one file per model. The pack records what
     `fleetscore train` records (training range, size, score quantiles), so its manifest is as large as a real
     one; the quantiles are stand-ins (their values do not change the cost of loading them);
 (g) what the library's default detector costs against this one, as the scoring job pays it (in a process of
     its own, like a scoring worker, with both packs loaded from disk): per exported
     partition (PARTITION_MODELS pairs), the features from the window aggregates (`score.partition_features`)
     plus `engine.score`, for (g1) these one-class SVMs on mean, min, max, std (the default before issue 12,
     thresholds at 0) and (g2) change-z (the default since: calibrated thresholds, the change from the recent
     past, whose partitions carry each pair's `change.CONTEXT_WINDOWS` earlier windows as context rows, as the export
     sends them to a pair that is not an announce sensor: `scoring_job.pack.lookback`), on the
     same scored windows. change-z's models are 64 templates fitted on this fleet's kind of windows, shared
     round-robin (its scoring cost does not depend on the fitted numbers).
Last line: RESULT vs_reference=... vs_sklearn=... vs_exp_bound=... f32_speedup=... pack_load_speedup=...
change_z_cost=... ((g2) / (g1))
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetscore.settings import Settings  # noqa: E402
from scoring_job import _kernels, change, engine  # noqa: E402
from scoring_job.contract import CONTEXT_COLUMN  # noqa: E402
from scoring_job.features import FEATURES, time_features  # noqa: E402
from scoring_job.pack import QUANTILES, load_pack, training_summary, write_pack  # noqa: E402
from scoring_job.score import partition_features  # noqa: E402
from scoring_job.train import make_estimator  # noqa: E402

CACHE = Path(os.environ.get("FLEETSCORE_BENCH_CACHE", Path.home() / ".cache" / "fleetscore-bench"))
TRAIN_WINDOWS = 2016  # one week of 5-minute windows
SENSORS = ("humidity", "pressure", "temp", "vibration")  # generated in sorted order, as the export writes rows
REFERENCE_BUDGET_S = 180.0
W_MS = 300_000


def keys_for(n_models: int) -> list[tuple[str, str]]:
    return [(f"dev-{i // len(SENSORS):05d}", SENSORS[i % len(SENSORS)]) for i in range(n_models)]


def window_features(rng: np.random.Generator, level: float, spread: float, n: int, anomaly_rate: float) -> np.ndarray:
    """n windows of (mean, min, max, std) for a sensor with this level and noise, a few shifted or noisy."""
    mean = level + spread * 0.3 * rng.standard_normal(n)
    std = spread * rng.gamma(20.0, 1 / 20.0, n)
    lo = mean - std * (1.6 + 0.4 * rng.random(n))
    hi = mean + std * (1.6 + 0.4 * rng.random(n))
    bad = rng.random(n) < anomaly_rate
    shift = spread * (3 + 3 * rng.random(n)) * np.where(rng.random(n) < 0.5, -1, 1)
    mean, lo, hi = mean + bad * shift, lo + bad * shift, hi + bad * shift
    std = np.where(bad & (rng.random(n) < 0.5), std * 3, std)
    return np.column_stack([mean, lo, hi, std])


def model_params(i: int) -> tuple[float, float]:
    r = np.random.default_rng([7, i])
    return float(r.uniform(-20, 80)), float(r.uniform(0.2, 5.0))


def _fit_range(lo: int, hi: int) -> list:
    out = []
    for i in range(lo, hi):
        level, spread = model_params(i)
        X = window_features(np.random.default_rng([11, i]), level, spread, TRAIN_WINDOWS, 0.0)
        out.append(make_estimator("ocsvm-rbf").fit(X))
    return out


def build_fleet(n_models: int) -> dict:
    path = CACHE / f"fleet-ocsvm-{n_models}-v2.pkl"
    if path.exists():
        t = time.perf_counter()
        with path.open("rb") as f:  # the benchmark's own cache, written below by this script
            models = pickle.load(f)
        print(f"fleet: {n_models} fitted models from cache {path} ({time.perf_counter() - t:.1f} s)")
        return models
    from sklearn.utils.parallel import Parallel, delayed

    t = time.perf_counter()
    step = 200
    print(f"fleet: fitting {n_models} StandardScaler+OneClassSVM models on {TRAIN_WINDOWS} windows each "
          f"(cached afterwards in {CACHE}) ...", flush=True)
    parts = Parallel(n_jobs=-1)(delayed(_fit_range)(i, min(i + step, n_models)) for i in range(0, n_models, step))
    ests = [e for p in parts for e in p]
    models = dict(zip(keys_for(n_models), ests, strict=True))
    CACHE.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(models, f, protocol=pickle.HIGHEST_PROTOCOL)
    print(f"fleet: fitted in {time.perf_counter() - t:.0f} s")
    return models


def scoring_windows(keys: list[tuple[str, str]], windows: int, seed: int = 3) -> pd.DataFrame:
    """Windows for ``keys`` (in that order; model i = keys_for's i-th key) from each model's own distribution."""
    rng = np.random.default_rng(seed)
    number = {k: i for i, k in enumerate(keys_for(len(keys)))}
    parts = []
    for k in keys:
        level, spread = model_params(number[k])
        parts.append(window_features(rng, level, spread, windows, 0.02))
    X = np.concatenate(parts)
    ends = pd.Timestamp("2026-11-23T10:00:00Z") + pd.to_timedelta(np.arange(windows) * 5, unit="min")
    return pd.DataFrame({
        "device": np.repeat([k[0] for k in keys], windows),
        "sensor": np.repeat([k[1] for k in keys], windows),
        "window_end": np.tile(ends.as_unit("ms"), len(keys)),
        "n": np.full(len(X), 60, dtype=np.int64),
        **{f: X[:, j] for j, f in enumerate(FEATURES)},
    })


def training_record(keys: list[tuple[str, str]]) -> dict:
    """What training writes to the manifest per model: range, size and score quantiles (stand-in values)."""
    q = np.sort(np.random.default_rng(5).normal(-0.5, 0.3, size=(len(keys), len(QUANTILES))), axis=1)
    return {k: {"from": "2026-11-16T00:05:00Z", "until": "2026-11-23T00:00:00Z", "size": TRAIN_WINDOWS,
                "score_quantiles": dict(zip([name for name, _ in QUANTILES], row.tolist(), strict=True))}
            for k, row in zip(keys, q, strict=True)}


def aggregates(frame: pd.DataFrame) -> pd.DataFrame:
    """Window feature rows (device, sensor, window_end, n, mean, min, max, std) as the window aggregates a
    partition holds (n, sum, sumsq, min, max), from which `features.window_features` gives them back."""
    n = frame["n"].to_numpy(dtype=np.float64)
    mean, std = frame["mean"].to_numpy(), frame["std"].to_numpy()
    return pd.DataFrame({"device": frame["device"], "sensor": frame["sensor"], "window_end": frame["window_end"],
                         "n": frame["n"], "sum": mean * n, "sumsq": std * std * (n - 1) + mean * mean * n,
                         "min": frame["min"], "max": frame["max"]})


def change_z_pack(keys: list[tuple[str, str]], folder: Path, templates: int = 64) -> object:
    """(g2)'s pack: `templates` change-z models fitted (with calibrated thresholds) on TRAIN_WINDOWS windows of
    this fleet's kind each (models 0, 1, ...'s level and spread), shared round-robin over ``keys``; loaded."""
    fitted, records = [], []
    ends = pd.Timestamp("2026-11-16T00:05:00Z") + pd.to_timedelta(np.arange(TRAIN_WINDOWS) * 5, unit="min")
    for i in range(templates):
        X = window_features(np.random.default_rng([13, i]), *model_params(i), TRAIN_WINDOWS, 0.0)
        train = pd.DataFrame({"device": keys[i][0], "sensor": keys[i][1], "window_end": ends.as_unit("ms"),
                              "n": 60, **{f: X[:, j] for j, f in enumerate(FEATURES)}})
        train = train.assign(**time_features(train["window_end"].array.asi8, ("tod_sin", "tod_cos")))
        feats = change.change_features(train, W_MS, announce=()).dropna(subset=list(change.FEATURES))
        est = make_estimator("change-z").fit(feats[list(change.FEATURES)].to_numpy())
        fitted.append(est)
        records.append(training_summary({keys[i]: est}, feats, change.FEATURES)[keys[i]])
    write_pack({k: fitted[i % templates] for i, k in enumerate(keys)}, folder, version="bench-change-z",
               features=change.FEATURES, training={k: records[i % templates] for i, k in enumerate(keys)})
    return load_pack(folder)


def partitions(keys: list[tuple[str, str]], windows: int, context: int, pairs: int) -> tuple[list, list]:
    """The exported partitions (`pairs` pairs each, keys dictionary-encoded as `score.read_partition` gives
    them) of each pair's `windows` scored windows: without, and with the `context` windows before them as
    context rows (the same scored windows in both)."""
    rows = aggregates(scoring_windows(keys, context + windows))
    rows[CONTEXT_COLUMN] = np.tile(np.arange(context + windows) < context, len(keys))
    rows = rows.assign(device=rows["device"].astype("category"), sensor=rows["sensor"].astype("category"))
    plain = rows[~rows[CONTEXT_COLUMN]]

    def split(frame: pd.DataFrame, per_pair: int) -> list[pd.DataFrame]:
        size = pairs * per_pair
        parts = [frame.iloc[i:i + size].reset_index(drop=True) for i in range(0, len(frame), size)]
        return [part.assign(device=part["device"].cat.remove_unused_categories(),  # a file's own dictionary
                            sensor=part["sensor"].cat.remove_unused_categories()) for part in parts]

    return split(plain, windows), split(rows, context + windows)


def time_partitions(parts: list[pd.DataFrame], pack, repeats: int) -> tuple[float, int]:
    """(g): best of `repeats` of features + score over every partition, and the windows scored."""
    def score_all() -> int:
        return sum(len(engine.score(partition_features(part, pack), pack, run_id="bench").predictions)
                   for part in parts)

    score_all()  # warm: the kernels compiled or loaded, the pack's engine arrays prepared
    return best_of(score_all, repeats)


def partition_costs(svm_pack: str, n_models: int, windows: int, repeats: int) -> tuple[float, float, int]:
    """(g1) and (g2) side by side, run in a process of its own (as a scoring worker: without this benchmark's
    fitted fleet and pickles in its heap): (seconds g1, seconds g2, partition pairs)."""
    keys = keys_for(n_models)
    pairs = Settings.model_construct().partition_models
    plain, with_context = partitions(keys, windows, change.CONTEXT_WINDOWS, pairs)
    with tempfile.TemporaryDirectory(prefix="fleetscore-bench-") as tmp:
        change_pack = change_z_pack(keys, Path(tmp) / "change-z")
    t_svm, n_svm = time_partitions(plain, load_pack(svm_pack), repeats)
    t_change, n_change = time_partitions(with_context, change_pack, repeats)
    assert n_svm == n_change == n_models * windows, (n_svm, n_change)
    return t_svm, t_change, pairs


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        out = None  # free the previous result before the clock starts, not inside the timing
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


@dataclasses.dataclass
class Measurements:
    """Seconds (best of the repeats) and the outputs the checks compare."""

    pickles: float  # unpickle one file per model
    pack_load: float  # load_pack, every SHA-256 verified
    prepare: float  # engine.prepare, once
    pack_bytes: int
    reference: float
    reference_note: str
    sklearn: float
    sklearn_out: dict  # {key: decision values}
    f64: float
    f32: float
    f64_strings: float  # float64, keys as plain strings
    out64: pd.DataFrame
    out32: pd.DataFrame
    rechecks: int
    svm_partitions: float  # (g1)
    change_partitions: float  # (g2)
    partition_pairs: int


def write_pack_and_pickles(models: dict, keys: list, tmp: Path) -> dict:
    """The fleet as a pack in ``tmp/pack`` and as one pickle per model in ``tmp/models``; {key: pickle path}."""
    write_pack(models, tmp / "pack", version="bench", training=training_record(keys))
    pkl_dir = tmp / "models"
    pkl_dir.mkdir()
    paths = {}
    for (d, s), est in models.items():
        p = pkl_dir / f"model_{d}_{s}.pkl"
        with p.open("wb") as f:
            pickle.dump(est, f)
        paths[(d, s)] = p
    os.sync()  # write-back of the files just written must not run during the timings below
    return paths


def time_loading(paths: dict, pack_dir: Path, repeats: int) -> tuple[float, float, object, float, int]:
    """(f): (unpickle every model, load_pack, the loaded pack, engine.prepare, the pack's bytes)."""
    def load_pickles():
        out = {}
        for k, p in paths.items():
            with p.open("rb") as f:
                out[k] = pickle.load(f)
        return out

    # best of N estimates each time without this VM's scheduling noise; the short timings get more tries
    # than the pickles' ~0.6 s, which average their noise over 10,000 files
    t_pickles, _ = best_of(load_pickles, 3)
    t_pack, pack = best_of(lambda: load_pack(pack_dir), repeats)
    t_prepare, _ = best_of(lambda: (pack.cache.clear(), engine.prepare(pack)), 1)
    pack_bytes = sum((pack_dir / n).stat().st_size for n in os.listdir(pack_dir))
    return t_pickles, t_pack, pack, t_prepare, pack_bytes


def time_reference(frame: pd.DataFrame, keys: list, paths: dict) -> tuple[float, str]:
    """(a): the reference's way on its own shared DataFrame (string columns, as read from its CSV); measured
    over every model when that fits REFERENCE_BUDGET_S, else extrapolated from a sample spread over the fleet."""
    ref_df = frame.rename(columns={"device": "Device", "sensor": "Sensor"})

    def reference(subset):
        preds = []
        for k in subset:
            with paths[k].open("rb") as f:
                est = pickle.load(f)
            rows = ref_df[(ref_df["Device"] == k[0]) & (ref_df["Sensor"] == k[1])]
            preds.append(est.predict(rows[list(FEATURES)].to_numpy()))
        return preds

    probe = keys[:: max(1, len(keys) // 40)][:40]
    t_probe, _ = best_of(lambda: reference(probe), 1)
    if t_probe / len(probe) * len(keys) <= REFERENCE_BUDGET_S:
        t_ref, _ = best_of(lambda: reference(keys), 1)
        return t_ref, f"measured over all {len(keys)} models"
    sub = keys[:: max(1, len(keys) // 400)]
    t_sub, _ = best_of(lambda: reference(sub), 1)
    t_ref = t_sub / len(sub) * len(keys)
    return t_ref, (f"EXTRAPOLATED: measured {len(sub)} models spread over the fleet ({t_sub:.1f} s), "
                   f"x {len(keys)}/{len(sub)}; a full run would take ~{t_ref / 60:.0f} min")


def time_sklearn(frame: pd.DataFrame, models: dict, keys: list) -> tuple[float, dict]:
    """(b): preloaded scikit-learn, one decision_function per model."""
    def sklearn_loop():
        X = frame[list(FEATURES)].to_numpy()
        groups = frame.groupby(["device", "sensor"], sort=False).indices
        return {k: models[k].decision_function(X[groups[k]]) for k in keys}

    return best_of(sklearn_loop, 1)


def time_engine(frame: pd.DataFrame, pack, windows: int, repeats: int) -> tuple[float, float, float, object, object]:
    """(c), (d): the engine on feature rows as the entry script reads them (keys dictionary-encoded), float64
    and float32, then float64 on plain string keys; (t64, t32, t64 strings, Scored f64, Scored f32)."""
    feats = frame.assign(device=frame["device"].astype("category"), sensor=frame["sensor"].astype("category"))
    engine.score(feats.iloc[: windows * 4], pack, dtype="float64")  # compile (or load) the kernels
    engine.score(feats.iloc[: windows * 4], pack, dtype="float32")
    t64, scored64 = best_of(lambda: engine.score(feats, pack, run_id="bench", dtype="float64"), repeats)
    t32, scored32 = best_of(lambda: engine.score(feats, pack, run_id="bench", dtype="float32"), repeats)
    t64s, _ = best_of(lambda: engine.score(frame, pack, run_id="bench", dtype="float64"), 1)
    return t64, t32, t64s, scored64, scored32


def measure(models: dict, keys: list, frame: pd.DataFrame, windows: int, repeats: int) -> Measurements:
    """Every timing of the module docstring but (e), on a pack and pickles written to a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="fleetscore-bench-") as tmp:
        paths = write_pack_and_pickles(models, keys, Path(tmp))
        t_pickles, t_pack, pack, t_prepare, pack_bytes = time_loading(paths, Path(tmp) / "pack", repeats)
        t_ref, ref_note = time_reference(frame, keys, paths)
        t_sk, sk = time_sklearn(frame, models, keys)
        t64, t32, t64s, scored64, scored32 = time_engine(frame, pack, windows, repeats)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            t_svm, t_change, pairs = pool.submit(partition_costs, str(Path(tmp) / "pack"), len(keys), windows,
                                                 repeats).result()
    return Measurements(pickles=t_pickles, pack_load=t_pack, prepare=t_prepare, pack_bytes=pack_bytes,
                        reference=t_ref, reference_note=ref_note, sklearn=t_sk, sklearn_out=sk, f64=t64, f32=t32,
                        f64_strings=t64s, out64=scored64.predictions, out32=scored32.predictions,
                        rechecks=scored32.stats.rechecks, svm_partitions=t_svm, change_partitions=t_change,
                        partition_pairs=pairs)


def exp_rates() -> tuple[float, float | None]:
    """(e): (this machine's numpy float64 exp rate, the fused kernel's inlined exp rate or None without numba),
    evaluations per second."""
    rate = _kernels.numpy_exp_rate(n=1 << 16, repeats=200)
    if not _kernels.HAVE_NUMBA:
        return rate, None
    x = -np.random.default_rng(0).random(1 << 16) * 20.0
    o = np.empty_like(x)
    _kernels.vexp64(x, o)
    best = float("inf")
    for _ in range(200):
        t = time.perf_counter()
        _kernels.vexp64(x, o)
        best = min(best, time.perf_counter() - t)
    return rate, x.size / best


def line(label: str, seconds: float, ratio: str = "", note: str = "") -> None:
    print(f"{label:60s} {seconds:10.4f} {ratio:>14s}   {note}".rstrip())


def report(m: Measurements, keys: list, n: int, windows: int, evals: int, repeats: int) -> None:
    """The table, the correctness checks on this fleet, and the RESULT line."""
    rate, fused = exp_rates()
    bound = evals / rate
    t64 = m.f64
    dec_sk = np.concatenate([m.sklearn_out[k] for k in keys])  # keys are sorted, like the engine's rows
    dec64 = -m.out64["score"].to_numpy()
    err = float(np.max(np.abs(dec64 - dec_sk)))
    mism = int((m.out64["is_anomaly"].to_numpy() != (dec_sk < 0)).sum())
    mism32 = int((m.out32["is_anomaly"].to_numpy() != m.out64["is_anomaly"].to_numpy()).sum())

    print(f"\nwindows scored: {n:,} ({len(keys)} models x {windows}); kernel evaluations: {evals:,}; "
          f"engine and pack times: best of {repeats}")
    print(f"{'':60s} {'seconds':>10s} {'/ engine f64':>14s}")
    line("(a) reference: per model unpickle + pandas mask + predict", m.reference, f"{m.reference / t64:.0f}x",
         f"[{m.reference_note}]")
    line("(b) preloaded scikit-learn, one decision_function per model", m.sklearn, f"{m.sklearn / t64:.1f}x")
    line("(c) engine float64", t64, "1.0x", f"[{evals / t64 / 1e6:.0f} M kernel evaluations/s]")
    line("(d) engine float32, float64 recheck near 0", m.f32, f"{m.f32 / t64:.2f}x",
         f"[{m.rechecks:,} windows rechecked = {m.rechecks / n:.2%}]")
    line("(e) exp bound = evaluations / numpy float64 exp rate", bound, f"{bound / t64:.2f}x",
         f"[numpy exp {rate / 1e6:.0f} M/s" + (f"; the kernel's inlined exp {fused / 1e6:.0f} M/s]" if fused else "]"))
    line("    engine float64, keys as plain strings (not dictionary)", m.f64_strings, f"{m.f64_strings / t64:.2f}x")
    line(f"(f) unpickle {len(keys)} model files, best of 3", m.pickles)
    line(f"    load_pack: manifest + SHA-256 of {m.pack_bytes / 1e6:.0f} MB, best of {repeats}", m.pack_load, "",
         f"[pickles / pack = {m.pickles / m.pack_load:.1f}x]")
    line("    engine.prepare, once per process (not in (c), (d))", m.prepare)
    line(f"(g1) these SVMs: features + score, {m.partition_pairs:,}-pair partitions", m.svm_partitions,
         f"{m.svm_partitions / t64:.2f}x", "[the default before issue 12]")
    line(f"(g2) change-z: the same, {change.CONTEXT_WINDOWS} context rows per pair", m.change_partitions,
         f"{m.change_partitions / t64:.2f}x", f"[{m.change_partitions / m.svm_partitions:.2f}x (g1); bar 1.5x]")
    print(f"checks: max |engine f64 - sklearn| = {err:.1e}; label mismatches vs sklearn: {mism}; float32 vs float64 "
          f"label mismatches: {mism32}; windows flagged: {int(m.out64['is_anomaly'].sum()):,}")
    print(f"RESULT vs_reference={m.reference / t64:.1f} vs_sklearn={m.sklearn / t64:.1f} "
          f"vs_exp_bound={t64 / bound:.2f} f32_speedup={t64 / m.f32:.2f} "
          f"pack_load_speedup={m.pickles / m.pack_load:.1f} change_z_cost={m.change_partitions / m.svm_partitions:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=10000)
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=15, help="best of N for the engine and pack timings")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)

    models = build_fleet(args.models)
    keys = sorted(models)  # rows sorted by (device, sensor, window_end), as the export writes partitions
    svs = np.array([m[-1].support_vectors_.shape[0] for m in models.values()])
    print(f"fleet: {len(keys)} models, support vectors per model min/median/max {svs.min()}/"
          f"{int(np.median(svs))}/{svs.max()}, {args.windows} windows each; "
          f"numba kernel: {'yes' if _kernels.HAVE_NUMBA else 'no (numpy path)'}")
    frame = scoring_windows(keys, args.windows)
    measurements = measure(models, keys, frame, args.windows, args.repeats)
    report(measurements, keys, len(frame), args.windows, int((svs * args.windows).sum()), args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
