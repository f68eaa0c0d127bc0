"""Alert persistence (k of n) measured: false alerts against recall for a few (k, n), on tuning seeds only.

    python benchmarks/persistence.py                        # seeds 101-110, 40 devices x 5 sensors, 2+2 days
    python benchmarks/persistence.py --seeds 101,102 --devices 20 --scenario varied

Per seed one simulated fleet (`simulate_fleet`): one model per pair trained on the clean days' window features
with the library's training defaults (`fit_fleet`, the pack written and loaded as `fleetscore train` does), the
faulty days scored by the engine, and the real episode rules (`update_alerts`, one file, no earlier state) run
over the same scores for each (k, n). Two threshold modes, side by side:

- `score>0`: the thresholds removed (files written before calibrated thresholds: threshold 0, never strong);
- `calibrated`: the per-model `threshold` / `threshold_strong` the engine writes (only when it writes them).

Figures pooled over the seeds: faults caught / faults (recall), alerts, precision, false alerts per 1,000
pair-days (pairs x faulty days). Seeds 101-110 are for tuning; the detection benchmark measures on others.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection import score_faulty_days, window_rows  # noqa: E402  (benchmarks/, the script's folder)

from fleetscore.alerts.episodes import HISTORY_COLUMNS, Persistence, update_alerts  # noqa: E402
from fleetscore.evaluation.metrics import events_in_range, match_alerts, pair_days  # noqa: E402
from fleetscore.settings import Settings  # noqa: E402
from fleetscore.sim.simulate import simulate_fleet  # noqa: E402

PERSISTENCE = ("1/1", "2/2", "2/3", "3/3", "2/4", "3/4", "3/5", "4/4", "4/5", "5/5")
SEEDS = tuple(range(101, 111))
NO_HISTORY = pd.DataFrame({c: pd.Series(dtype="int64" if c == "window_end" else object) for c in HISTORY_COLUMNS})


def scored_fleet(seed: int, devices: int, days: float, clean_days: float, settings: Settings, scenario: str):
    """(scored rows of the faulty days as the index reads them, faults in that range, pair-days): trained and scored
    as the detection benchmark does it (`detection.score_faulty_days`)."""
    extra = {"scenario": scenario} if "scenario" in inspect.signature(simulate_fleet).parameters else {}
    sim = simulate_fleet(devices=devices, sensors=5, days=days, seed=seed, clean_days=clean_days, **extra)
    with tempfile.TemporaryDirectory() as folder:
        scored = score_faulty_days(window_rows(sim, settings), sim, settings, Path(folder) / "pack",
                                   lambda *_: None)
    faults = events_in_range(sim.faults, sim.clean_until_ms, sim.end_ms)
    pairs = sim.readings[["device", "sensor"]].drop_duplicates().shape[0]
    return scored, faults, pair_days(pairs, sim.clean_until_ms, sim.end_ms)


def as_today(scored: pd.DataFrame) -> pd.DataFrame:
    """The same scores with today's rule: anomalous ⇔ score > 0, never strong."""
    out = scored.drop(columns=[c for c in ("threshold", "threshold_strong") if c in scored.columns])
    return out.assign(is_anomaly=out["score"].to_numpy() > 0)


def alerts_for(scored: pd.DataFrame, persistence: str, settings: Settings) -> pd.DataFrame:
    """The alerts the episode rules raise over `scored` (device, sensor, first/last_window_end)."""
    k, n = (int(x) for x in persistence.split("/"))
    update = update_alerts(scored, pd.DataFrame(), NO_HISTORY, window_ms=settings.window_ms,
                           persistence=Persistence(k, n), close_after=settings.alert_close_after_windows,
                           severity_of=lambda *_: "medium", now=0)
    return pd.DataFrame(update.new, columns=["device", "sensor", "first_window_end", "last_window_end"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--days", type=float, default=4.0)
    parser.add_argument("--clean-days", type=float, default=2.0)
    parser.add_argument("--scenario", default="classic", help="the simulator's scenario (classic, varied)")
    args = parser.parse_args(argv)
    settings = Settings.model_construct()  # library defaults, no environment
    totals: dict[tuple[str, str], np.ndarray] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        scored, faults, exposure = scored_fleet(seed, args.devices, args.days, args.clean_days, settings,
                                                 args.scenario)
        modes = {"score>0": as_today(scored)}
        if "threshold" in scored.columns:
            modes["calibrated"] = scored
        for mode, frame in modes.items():
            for persistence in PERSISTENCE:
                m = match_alerts(alerts_for(frame, persistence, settings), faults, settings.window_ms)
                row = np.array([m.detected_faults, len(faults), m.true_alerts, m.false_alerts, exposure])
                totals[(mode, persistence)] = totals.get((mode, persistence), 0) + row
        print(f"seed {seed}: {len(scored):,} windows, {len(faults)} faults", flush=True)
    print(f"{'mode':<11} {'k/n':>4} {'recall':>7} {'alerts':>7} {'precision':>9} {'false/1000 pair-days':>21}")
    for (mode, persistence), (caught, events, true, false, exposure) in totals.items():
        alerts = true + false
        print(f"{mode:<11} {persistence:>4} {caught / max(events, 1):7.3f} {int(alerts):7d} "
              f"{true / alerts if alerts else 1.0:9.3f} {1000 * false / exposure:21.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
