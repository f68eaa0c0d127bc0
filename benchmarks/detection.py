"""Detection benchmark: how many alerts are worth acting on, side by side in one run.

    python benchmarks/detection.py                   # 300 pairs, 2 clean + 3 faulty days, seeds 1, 2, 3
    python benchmarks/detection.py --pairs 500 --days 6 --seeds 4,5,6

Per seed, one simulated fleet (`simulate_fleet`, the varied scenario when the simulator has it): the pairs train
on the clean days and are scored on the faulty days after them. Three ways to turn that into alerts:

 (a) the library defaults: `Settings` with no option set (environment and local.settings.json ignored); train
     with `scoring_job.train.fit_fleet` on the clean days' window features, write and load the pack as
     `fleetscore train` does, score the faulty days with `scoring_job.engine.score`, and raise alerts with the
     real alert rules (`fleetscore.alerts.episodes.update_alerts`) over the scored windows - the same code the
     index runs, called directly (no SQL; the pack goes through a temporary folder because the engine loads packs
     from one);
 (b) today's default before issue 12, fixed here so it stays put while the library changes: the one-class SVM
     (ocsvm-rbf) on the window statistics mean, min, max, std, trained and scored the same way; a window is
     anomalous when score > 0, and every run of consecutive anomalous windows is one alert (ALERT_MIN_WINDOWS = 1),
     raised at its first window;
 (c) the reference architecture: per pair one StandardScaler + OneClassSVM(rbf, nu=0.05, gamma="scale") - the
     model `benchmarks/scoring.py` stands in for the reference with - fitted on the pair's RAW clean-day readings
     (one feature: the value) and predicting every faulty-day reading; every flagged reading is an alert. The row
     below it merges consecutive flagged readings of a pair into one alert, for scale only (the RESULT line
     uses the strict rule). The last row puts as many flagged readings per pair as (c) flags at random positions
     among the pair's faulty-day readings (`chance_flags`, drawn from the seed): the recall that (c)'s volume of
     alerts reaches by chance alone, beside what (c) reaches by its model.

Metrics, per seed and their mean: event-level recall (a fault is caught when an alert overlaps the windows it
touches, widened by one window each side), precision (an alert is true when it overlaps a fault that way),
false alerts per 1,000 pair-days (pair-days = the fleet's pairs x the faulty days), and the median time to
detect over caught faults (`fleetscore.evaluation.metrics.detect`): the end of the window whose score raised the
alert (for (c) the window holding the flagged reading; not before the fault's first window) minus the fault's
first reading, in minutes. The raising window is found as `fleetscore evaluate` finds it
(`fleetscore.evaluation.sweep.raise_windows`).
Schedule latency (a run every hour) is not in it. Before the tables: the share of faults (a) and (c) caught, by
fault kind and size class (subtle 2-3 sigma, moderate 3-6, gross 6-15; stuck has no size) and by the pair's
reporting mode (regular, sparse, on_change), over all seeds: where the library's misses are; then (a)'s operating
points: the same fleets trained, scored and alerted again with ALERT_FALSE_RATE at each of --rates (the rate the
thresholds are calibrated at, the operator's knob), and the best recall among them within 5 false alerts per 1,000
pair-days (the issue's bar), so a missed bar shows whether a setting would reach it.

Last line: RESULT recall=... precision=... false_per_1000_pair_days=... vs_reference_false=...  for (a), the mean
of the seeds' figures; vs_reference_false = reference (c) false alerts / library (a) false alerts, summed over the
seeds.
Seeds 1, 2, 3 are the measurement seeds: tuning uses 101-110, never these.

--without-course is an ablation: the same fleets (same seeds, noise, sampling, faults) with each sensor's normal
course taken out (daily and weekly cycles, trend, wander, setpoint responses; `simulate_fleet(normal_course=False)`).
Beside a run without it, it shows how much of what (a) misses comes from the normal course it has to see through,
and how much from the evidence a fault leaves in the windows at all.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetscore.alerts.episodes import HISTORY_COLUMNS, Persistence, update_alerts  # noqa: E402
from fleetscore.cli.console import progress_bar, stage_ticker  # noqa: E402
from fleetscore.cli.evaluate import episode_rules  # noqa: E402
from fleetscore.evaluation.metrics import (  # noqa: E402
    Detection,
    by_opening_rule,
    detect,
    episodes_from_flags,
    events_in_range,
    match_alerts,
    pair_days,
)
from fleetscore.evaluation.sweep import raise_windows  # noqa: E402
from fleetscore.ingest.windows import aggregate, window_end  # noqa: E402
from fleetscore.settings import Settings  # noqa: E402
from fleetscore.sim.simulate import Simulation, simulate_fleet  # noqa: E402
from scoring_job import engine  # noqa: E402
from scoring_job.change import model_features  # noqa: E402
from scoring_job.pack import load_pack, write_pack  # noqa: E402
from scoring_job.train import fit_fleet, make_estimator  # noqa: E402

SEEDS = (1, 2, 3)
"""Measurement seeds (tuning elsewhere uses 101-110)."""
SENSORS = 5
TRAIN_DAYS = 2.0
TICK_SECONDS = 60.0
"""The simulator's tick (its devices report every 1-3 ticks): --tick-seconds changes it, e.g. to see sensors that
report less often than once per window."""
REFERENCE_PARAMS = {"nu": 0.05, "gamma": "scale"}
"""The reference's OneClassSVM, as benchmarks/scoring.py models it (behind a StandardScaler)."""
REFERENCE_MAX_TRAIN = 2880
"""Raw readings the reference fits per pair at most (evenly spaced); 2 days at 60 s = 2,880, all of them."""
RATES = (0.005, 0.02, 0.03)
"""ALERT_FALSE_RATE values of the library's operating-point table, beside the default (`thresholds.FALSE_RATE`)."""
FALSE_BUDGET = 5.0
"""The issue's bar for false alerts per 1,000 pair-days: the operating-point table names the best recall within it."""
Tick = Callable[[str, int, int], None]
AtRates = dict[float, Detection]
"""(a)'s figures of one seed per ALERT_FALSE_RATE."""


# ------------------------------------------------------------------------------------------ the fleet
def simulate(seed: int, pairs: int, days: float, train_days: float, tick_seconds: float = TICK_SECONDS,
             normal_course: bool = True) -> Simulation:
    """The benchmark fleet: ceil(pairs / SENSORS) devices x SENSORS sensors on ticks `tick_seconds` apart (each
    device reports every 1-3 ticks), `train_days` clean days first; the varied scenario when the simulator
    offers it (`normal_course=False`: with each sensor's normal course taken out, an ablation)."""
    kwargs = {"scenario": "varied"} if "scenario" in inspect.signature(simulate_fleet).parameters else {}
    if not normal_course:
        kwargs["normal_course"] = False
    return simulate_fleet(devices=math.ceil(pairs / SENSORS), sensors=SENSORS, days=days, seed=seed,
                          clean_days=train_days, interval_seconds=tick_seconds, **kwargs)


def scenario_name() -> str:
    return "varied" if "scenario" in inspect.signature(simulate_fleet).parameters else "default (no varied yet)"


def window_rows(sim: Simulation, settings: Settings) -> pd.DataFrame:
    """Every window's features for the library's models (device, sensor, window_end UTC datetime, n, mean, min,
    max, std, time of day, and for change-z mean_change and settling), as ingest and the scoring job produce them,
    over the whole simulated range (so the first scored windows have their baseline)."""
    windows = aggregate(sim.readings, settings.window_ms)
    windows["window_end"] = pd.to_datetime(windows["window_end"], unit="ms", utc=True)
    return model_features(windows, settings.features, settings.window_ms, announce=settings.announce)


def fleet_pair_days(sim: Simulation) -> float:
    """The fleet's pairs x the faulty (scored) days."""
    return pair_days(sim.readings[["device", "sensor"]].drop_duplicates().shape[0], sim.clean_until_ms, sim.end_ms)


# ------------------------------------------------------------------------------------------ (a) and (b)
def default_settings(overrides: dict[str, str] | None = None) -> Settings:
    """The library's defaults: no environment, no local.settings.json, no option; with `overrides` ({SETTING:
    value}, from --set) those settings changed, validated as the environment would be."""
    if not overrides:
        return Settings.model_construct()
    return Settings.model_validate({**Settings.model_construct().model_dump(by_alias=True), **overrides})


def before_issue_12() -> Settings:
    """(b)'s models: the one-class SVM on the window statistics, the default before issue 12."""
    return Settings.model_construct(model_algorithm="ocsvm-rbf", model_features="mean,min,max,std")


def score_faulty_days(features: pd.DataFrame, sim: Simulation, settings: Settings, folder: Path,
                      tick: Tick) -> pd.DataFrame:
    """Train on the clean days' windows as `fleetscore train` does, then score the faulty days' windows with the
    engine: the scored rows (status ok) with window_end as int64 epoch ms, as the index reads them."""
    clean_until = pd.Timestamp(sim.clean_until_ms, unit="ms", tz="UTC")
    train = features[features["window_end"] <= clean_until]
    fit = fit_fleet(train, algorithm=settings.model_algorithm, params=settings.model_params,
                    feature_names=settings.features, min_windows=settings.model_min_windows,
                    false_rate=settings.alert_false_rate, window_ms=settings.window_ms, announce=settings.announce,
                    progress=lambda done, total: tick(f"train {settings.model_algorithm}", done, total))
    write_pack(fit.models, folder, version="bench", features=settings.features,
               window_minutes=settings.window_minutes, training=fit.training, announce=settings.announce)
    pack = load_pack(folder)
    predictions = engine.score(features[features["window_end"] > clean_until], pack, run_id="bench").predictions
    scored = predictions[predictions["status"] == "ok"].copy()
    scored["window_end"] = (scored["window_end"].astype("datetime64[ms, UTC]").astype("int64")
                            if not pd.api.types.is_integer_dtype(scored["window_end"]) else scored["window_end"])
    for name in ("device", "sensor", "model_version", "run_id", "status"):
        scored[name] = scored[name].astype(str)
    return scored.reset_index(drop=True)


def _run_rules(scored: pd.DataFrame, settings: Settings) -> list[dict]:
    """The alerts the real rules raise over `scored` taken as one file with no earlier state."""
    history = pd.DataFrame({c: pd.Series(dtype="int64" if c == "window_end" else object) for c in HISTORY_COLUMNS})
    update = update_alerts(scored, pd.DataFrame(), history, window_ms=settings.window_ms,
                           persistence=Persistence(*settings.alert_k_of_n),
                           close_after=settings.alert_close_after_windows, severity_of=lambda *_: "medium", now=0)
    return update.new


def library_alerts(scored: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """(a): the real alert rules with the default settings; one row per alert (device, sensor, first_window_end,
    last_window_end, opened_by, raised_window_end)."""
    alerts = _run_rules(scored, settings)
    frame = pd.DataFrame(alerts, columns=["device", "sensor", "first_window_end", "last_window_end", "opened_by"])
    return frame.assign(raised_window_end=raise_windows(frame, scored, episode_rules(settings)))


def today_alerts(scored: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """(b): score > 0 flags a window; each run of flagged windows is one alert, raised at its first window."""
    flags = scored[["device", "sensor", "window_end"]].assign(is_anomaly=scored["score"].to_numpy() > 0)
    episodes = episodes_from_flags(flags, window_ms)
    return episodes.assign(raised_window_end=episodes["first_window_end"].to_numpy(dtype=np.int64))


# ------------------------------------------------------------------------------------------ (c) the reference
def _reference_pair(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """(test,) bool: the reference's flags for one pair's raw test readings after fitting on `train` (n,)."""
    if len(train) > REFERENCE_MAX_TRAIN:
        train = train[np.linspace(0, len(train) - 1, REFERENCE_MAX_TRAIN).round().astype(np.int64)]
    est = make_estimator("ocsvm-rbf", REFERENCE_PARAMS).fit(train[:, None])
    return est.predict(test[:, None]) == -1


def _reference_batch(batch: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [_reference_pair(train, test) for train, test in batch]


def reference_flags(sim: Simulation, tick: Tick) -> tuple[pd.DataFrame, int]:
    """(c): every faulty-day reading the reference flags: device, sensor, ts (epoch ms), position (its index among
    the pair's faulty-day readings); fitted on all cores. And how many pairs were fitted on a subsample."""
    from sklearn.utils.parallel import Parallel, delayed

    r = sim.readings
    ts, values = r["ts"].to_numpy(np.int64), r["value"].to_numpy(np.float64)
    groups = list(r.groupby(["device", "sensor"], sort=True).indices.items())
    work = []
    for _, idx in groups:
        clean = ts[idx] <= sim.clean_until_ms
        work.append((values[idx][clean], values[idx][~clean]))
    size = 16
    batches = [work[i:i + size] for i in range(0, len(work), size)]
    flags: list[np.ndarray] = []
    for out in Parallel(n_jobs=-1, return_as="generator")(delayed(_reference_batch)(b) for b in batches):
        flags.extend(out)
        tick("(c) reference: fit + predict raw readings", len(flags), len(work))
    parts = []
    for ((device, sensor), idx), hot in zip(groups, flags, strict=True):
        test_ts = ts[idx][ts[idx] > sim.clean_until_ms]
        parts.append(pd.DataFrame({"device": device, "sensor": sensor, "ts": test_ts[hot],
                                   "position": np.flatnonzero(hot)}))
    return pd.concat(parts, ignore_index=True), sum(len(train) > REFERENCE_MAX_TRAIN for train, _ in work)


def chance_flags(flags: pd.DataFrame, sim: Simulation, seed: int) -> pd.DataFrame:
    """As many flagged readings per pair as `flags` (the reference's) holds, at random positions among the pair's
    faulty-day readings (columns device, sensor, ts): what the reference's volume of alerts catches by chance."""
    r = sim.readings
    test = r[r["ts"].to_numpy(np.int64) > sim.clean_until_ms]
    ts = test["ts"].to_numpy(np.int64)
    counts = flags.groupby(["device", "sensor"], sort=False).size()
    rng = np.random.default_rng(seed)
    parts = [pd.DataFrame({"device": device, "sensor": sensor,
                           "ts": np.sort(ts[rng.choice(idx, size=min(int(counts[(device, sensor)]), len(idx)),
                                                       replace=False)])})
             for (device, sensor), idx in test.groupby(["device", "sensor"], sort=True).indices.items()
             if (device, sensor) in counts.index]
    return pd.concat(parts, ignore_index=True) if parts else flags[["device", "sensor", "ts"]]


def reference_alerts(flags: pd.DataFrame, window_ms: int, merged: bool) -> pd.DataFrame:
    """Alerts from flagged readings: one per reading, or (merged) one per run of consecutive flagged readings of
    a pair; spans as the windows holding them, raised at the window of the (first) reading."""
    ends = window_end(flags["ts"].to_numpy(np.int64), window_ms)
    alerts = flags.assign(first_window_end=ends, last_window_end=ends, raised_window_end=ends)
    if not merged or alerts.empty:
        return alerts
    new = ((alerts["device"] != alerts["device"].shift()) | (alerts["sensor"] != alerts["sensor"].shift())
           | (alerts["position"].diff() != 1))
    run = new.cumsum()
    return alerts.groupby(run, sort=False).agg(device=("device", "first"), sensor=("sensor", "first"),
                                               first_window_end=("first_window_end", "min"),
                                               last_window_end=("last_window_end", "max"),
                                               raised_window_end=("raised_window_end", "min")).reset_index(drop=True)


# ------------------------------------------------------------------------------------------ what is missed
SIZE_CLASSES = ((0.0, 3.0, "subtle"), (3.0, 6.0, "moderate"), (6.0, math.inf, "gross"))
"""Fault size classes by magnitude (σ units), as the simulator draws them (`fleetscore.sim.faults.MAGNITUDES`)."""


def size_class(magnitude: np.ndarray) -> np.ndarray:
    """(faults,) "subtle", "moderate" or "gross" by magnitude (σ units); "-" for a fault without one (stuck)."""
    out = np.full(len(magnitude), "-", dtype=object)
    for low, high, name in SIZE_CLASSES:
        out[(magnitude >= low) & (magnitude < high)] = name
    return out


def caught_faults(sim: Simulation, caught: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per scored fault: kind, size (:func:`size_class`), the pair's reporting mode (regular, sparse,
    on_change; "-" when the simulator does not say) and, per approach in `caught`, whether it was caught (bool)."""
    details = events_in_range(sim.fault_details, sim.clean_until_ms, sim.end_ms).reset_index(drop=True)
    modes = (sim.pairs.set_index(["device", "sensor"])["mode"] if "mode" in sim.pairs.columns
             else pd.Series(dtype=object))
    mode = [modes.get((d, s), "-") for d, s in zip(details["device"], details["sensor"], strict=True)]
    return pd.DataFrame({"kind": details["kind"].astype(str).to_numpy(),
                         "size": size_class(details["magnitude"].to_numpy(dtype=np.float64)),
                         "mode": mode, **caught})


# ------------------------------------------------------------------------------------------ one seed
APPROACHES = ("(a) library defaults", "(b) today: score > 0, one window",
              "(c) reference: raw readings, every flagged reading", "    (c) with consecutive flagged readings merged",
              "    (c) at random: as many flagged readings per pair")


def measure_seed(seed: int, pairs: int, days: float, train_days: float, tick: Tick,
                 overrides: dict[str, str] | None = None,
                 rates: tuple[float, ...] = (),
                 tick_seconds: float = TICK_SECONDS,
                 normal_course: bool = True) -> tuple[dict[str, Detection], str, pd.DataFrame, AtRates, pd.DataFrame]:
    """The rows of one seed's fleet, a note on how its models were fitted, each fault with whether (a)
    and (c) caught it (:func:`caught_faults`), (a)'s figures with ALERT_FALSE_RATE set to each of `rates`
    (trained, scored and alerted again: the rate is a training setting), and (a)'s alerts by the rule that opened
    them (`metrics.by_opening_rule`)."""
    settings = default_settings(overrides)
    W = settings.window_ms
    sim = simulate(seed, pairs, days, train_days, tick_seconds, normal_course)
    faults = events_in_range(sim.faults, sim.clean_until_ms, sim.end_ms)
    features = window_rows(sim, settings)
    exposure = fleet_pair_days(sim)
    points: AtRates = {}
    with tempfile.TemporaryDirectory(prefix="fleetscore-detection-") as tmp:
        scored = score_faulty_days(features, sim, settings, Path(tmp) / "pack", tick)
        scored_svm = score_faulty_days(features, sim, before_issue_12(), Path(tmp) / "svm", tick)
        for rate in rates:
            at_rate = default_settings({**(overrides or {}), "ALERT_FALSE_RATE": str(rate)})
            scored_at = score_faulty_days(features, sim, at_rate, Path(tmp) / f"rate-{rate}", tick)
            points[rate] = detect(library_alerts(scored_at, at_rate), faults, window_ms=W, pair_days=exposure)
    flags, subsampled = reference_flags(sim, tick)
    alerts = [library_alerts(scored, settings), today_alerts(scored_svm, W), reference_alerts(flags, W, merged=False),
              reference_alerts(flags, W, merged=True),
              reference_alerts(chance_flags(flags, sim, seed), W, merged=False)]
    rows = {label: detect(a, faults, window_ms=W, pair_days=exposure)
            for label, a in zip(APPROACHES, alerts, strict=True)}
    pairs_total = sim.readings[["device", "sensor"]].drop_duplicates().shape[0]
    faults_caught = caught_faults(sim, {short: match_alerts(alerts[i], faults, W).fault_is_detected
                                        for short, i in (("(a)", 0), ("(c)", 2))})
    points[settings.alert_false_rate] = rows[APPROACHES[0]]
    by_rule = by_opening_rule(alerts[0], faults, window_ms=W, pair_days=exposure)
    return rows, (f"{pairs_total} pairs; library: {scored[['device', 'sensor']].drop_duplicates().shape[0]} "
                  f"pairs with a model; reference: {subsampled} pairs fitted on a subsample"), faults_caught, points, \
        by_rule


# ------------------------------------------------------------------------------------------ report
HEADER = (f"  {'':52s} {'recall':>7s} {'precision':>9s} {'false/1000pd':>12s} {'TTD min':>8s} "
          f"{'alerts':>9s} {'false':>9s} {'caught':>9s}")


def format_row(label: str, d: Detection) -> str:
    ttd = "-" if math.isnan(d.median_ttd_minutes) else f"{d.median_ttd_minutes:.0f}"
    return (f"  {label:52s} {d.recall:7.3f} {d.precision:9.3f} {d.false_per_1000_pair_days:12,.1f} {ttd:>8s} "
            f"{d.alerts:9,d} {d.false_alerts:9,d} {d.caught:4d}/{d.events:<4d}")


def seed_mean(rows: list[Detection]) -> Detection:
    """The seeds together: recall, precision, false alerts per 1,000 pair-days and the median time to detect as
    the mean of the seeds' figures; the counts summed over the seeds."""
    alerts, true, false, events, caught = (sum(getattr(d, f) for d in rows)
                                           for f in ("alerts", "true_alerts", "false_alerts", "events", "caught"))

    def mean(field: str) -> float:
        values = [getattr(d, field) for d in rows if not math.isnan(getattr(d, field))]
        return float(np.mean(values)) if values else math.nan

    return Detection(events=events, caught=caught, alerts=alerts, true_alerts=true, false_alerts=false,
                     precision=mean("precision"), recall=mean("recall"), pair_days=sum(d.pair_days for d in rows),
                     false_per_1000_pair_days=mean("false_per_1000_pair_days"),
                     median_ttd_minutes=mean("median_ttd_minutes"))


def caught_share(faults: pd.DataFrame, by: str) -> pd.DataFrame:
    """Faults and the share (a) and (c) caught, by the column `by` of :func:`caught_faults`' rows."""
    return faults.groupby(by, sort=True).agg(faults=("(a)", "size"), a=("(a)", "mean"), c=("(c)", "mean"))


def report_missed(faults: pd.DataFrame) -> None:
    """What (a) misses: the share of faults caught by (a) and by (c), by kind and size and by reporting mode."""
    print(f"\ncaught share by fault kind and size, and by the pair's reporting mode (all seeds; {len(faults)} faults)")
    print(f"  {'':28s} {'faults':>6s} {'(a)':>6s} {'(c)':>6s}")
    for by in (["kind", "size"], "mode"):
        for key, row in caught_share(faults, by).iterrows():
            label = " ".join(key) if isinstance(key, tuple) else key
            print(f"  {label:28s} {row['faults']:6.0f} {row['a']:6.2f} {row['c']:6.2f}")


def report_points(points: list[AtRates], default_rate: float) -> None:
    """(a) at each ALERT_FALSE_RATE measured (mean of the seeds, as the tables below), and the best recall among
    them within :data:`FALSE_BUDGET` false alerts per 1,000 pair-days."""
    print(f"\n(a) operating points: ALERT_FALSE_RATE, everything else as (a) (mean of seeds)\n{HEADER}")
    means = {rate: seed_mean([seed[rate] for seed in points]) for rate in sorted(points[0])}
    for rate, d in means.items():
        print(format_row(f"ALERT_FALSE_RATE={rate:g}{' (a)' if rate == default_rate else ''}", d))
    within = [d.recall for d in means.values() if d.false_per_1000_pair_days <= FALSE_BUDGET]
    best = f"{max(within):.3f}" if within else "none"
    print(f"  best recall within {FALSE_BUDGET:g} false alerts per 1,000 pair-days among these rates: {best}")


def report_rules(tables: list[pd.DataFrame], pair_days: float) -> None:
    """(a)'s alerts of all seeds by the rule that opened them: alerts, true, false, false per 1,000 pair-days."""
    pooled = pd.concat(tables, ignore_index=True).groupby("opened_by", sort=False)[
        ["alerts", "true_alerts", "false_alerts"]].sum()
    print(f"\n(a)'s alerts by the rule that opened them (all seeds, {pair_days:,.0f} pair-days)")
    print(f"  {'':28s} {'alerts':>6s} {'true':>6s} {'false':>6s} {'false/1000pd':>12s}")
    for rule, row in pooled.iterrows():
        print(f"  {rule:28s} {row['alerts']:6d} {row['true_alerts']:6d} {row['false_alerts']:6d} "
              f"{row['false_alerts'] * 1000.0 / pair_days:12.1f}")


def report(results: dict[int, dict[str, Detection]], notes: dict[int, str], changed: str = "") -> None:
    """Each seed's table, the pooled table and the RESULT line (library defaults, or the `changed` settings, vs the
    strict reference)."""
    for seed, rows in results.items():
        exposure = rows[APPROACHES[0]].pair_days
        print(f"\nseed {seed}: {exposure:,.0f} pair-days scored, {rows[APPROACHES[0]].events} faults; "
              f"{notes.get(seed, '')}\n{HEADER}")
        for label, d in rows.items():
            print(format_row(label, d))
    means = {label: seed_mean([rows[label] for rows in results.values()]) for label in APPROACHES}
    print(f"\nmean of seeds {', '.join(map(str, results))} (counts: the sum)\n{HEADER}")
    for label, d in means.items():
        print(format_row(label, d))
    lib, ref = means[APPROACHES[0]], means[APPROACHES[2]]
    ratio = ref.false_alerts / lib.false_alerts if lib.false_alerts else math.inf
    print(f"RESULT{' (' + changed + ')' if changed else ''} recall={lib.recall:.3f} precision={lib.precision:.3f} "
          f"false_per_1000_pair_days={lib.false_per_1000_pair_days:.1f} vs_reference_false={ratio:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=300, help="(device, sensor) pairs, at least (devices x 5 sensors)")
    ap.add_argument("--days", type=float, default=5.0, help="simulated days; the first --train-days are clean")
    ap.add_argument("--train-days", type=float, default=TRAIN_DAYS)
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma list (tuning uses 101-110: not those)")
    ap.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                    help="change a library setting for (a), e.g. --set ALERT_FALSE_RATE=0.02 (repeatable); "
                         "the RESULT line then is not the defaults' and says so")
    ap.add_argument("--tick-seconds", type=float, default=TICK_SECONDS,
                    help="the simulator's tick (devices report every 1-3 ticks; windows are WINDOW_MINUTES)")
    ap.add_argument("--without-course", action="store_true",
                    help="an ablation: the same fleets with each sensor's normal course (daily and weekly cycles, "
                         "trend, wander, setpoint responses) taken out, leaving level, noise, sampling and faults")
    ap.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES),
                    help="ALERT_FALSE_RATE values for (a)'s operating-point table, besides (a)'s own (empty: none)")
    args = ap.parse_args(argv)
    if not 0 < args.train_days < args.days:
        ap.error("--train-days must be positive and less than --days")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    warnings.simplefilter("ignore", UserWarning)
    overrides = dict(item.split("=", 1) for item in args.set)
    settings = default_settings(overrides)
    rates = tuple(r for r in (float(x) for x in args.rates.split(",") if x.strip()) if r != settings.alert_false_rate)
    course = " with the normal course taken out (--without-course)" if args.without_course else ""
    print(f"detection benchmark: scenario {scenario_name()}{course}, {math.ceil(args.pairs / SENSORS)} devices x "
          f"{SENSORS} sensors (+ any the scenario adds, e.g. setpoints), "
          f"{args.train_days:g} clean + {args.days - args.train_days:g} faulty days, {args.tick_seconds:g} s ticks, "
          f"seeds {seeds}; "
          f"library defaults: {settings.model_algorithm} on {','.join(settings.features)}, "
          f"ALERT_PERSISTENCE={'/'.join(map(str, settings.alert_k_of_n))}; "
          f"reference: fits at most {REFERENCE_MAX_TRAIN:,} raw readings per pair (an evenly spaced subsample "
          f"beyond that; the count of pairs subsampled is printed per seed)")
    t0 = time.perf_counter()
    results, notes, faults, points, rule_tables = {}, {}, [], [], []
    with progress_bar() as bar:
        tick = stage_ticker(bar)
        for seed in seeds:
            seed_tick = functools.partial(lambda seed, s, d, t: tick(f"seed {seed} {s}", d, t), seed)
            results[seed], notes[seed], caught, at_rates, by_rule = measure_seed(
                seed, args.pairs, args.days, args.train_days, seed_tick, overrides, rates, args.tick_seconds,
                not args.without_course)
            faults.append(caught)
            points.append(at_rates)
            rule_tables.append(by_rule)
    print(f"measured in {time.perf_counter() - t0:.0f} s")
    report_missed(pd.concat(faults, ignore_index=True))
    report_points(points, settings.alert_false_rate)
    report_rules(rule_tables, sum(rows[APPROACHES[0]].pair_days for rows in results.values()))
    report(results, notes, " ".join(args.set))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
