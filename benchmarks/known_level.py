"""What 5-minute windows can give at best: change-z *given* each pair's level, with its evidence accumulated.

    python benchmarks/known_level.py                    # seeds 1, 2, 3; 300 pairs, 2 clean + 3 faulty days
    python benchmarks/known_level.py --seeds 101,102,103 --k 1,1.5 --h 4,6,8,10

A ceiling study, not a detector: the fleets of `benchmarks/detection.py` with each sensor's normal course taken out
(`--without-course` there: daily and weekly cycles, trend, wander, setpoint responses gone; level, heavy-tailed
noise, sampling, gaps and faults kept), so that a pair's level is known outright. On them, per measured pair:

- the mean's z-score: (the window's mean minus the median of the pair's clean-day window means) · √n, over its
  robust scale on the clean days: the level a real detector has to guess from the recent past is given here;
- the spread's z-score: change-z's log(std + floor) against its clean-day median, over its robust scale;
- each z-score, clipped at ±`CLIP`, accumulated over the pair's windows by one-sided CUSUMs (the mean's in each
  direction), S = max(0, S_before + z - k): a fault too small for one window adds up over the windows it lasts,
  which change-z's recent past (30 minutes) cannot do;
- a window is anomalous when a sum exceeds h or it is stuck (change-z's `unchanged` rule on change-z's own fit);
  each run of anomalous windows is one alert, raised at its first window.

Beside it, on the same fleets, the library defaults (`benchmarks/detection.py`'s row (a)). Figures as there:
event-level recall, precision, false alerts per 1,000 pair-days, median time to detect; pooled over the seeds.
The default k and h (1.5 and 6) were chosen on tuning seeds 101-103; seeds 1-3 are the measurement seeds.

Last line: CEILING recall=... precision=... false_per_1000_pair_days=... for the chosen k and h (always measured).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection import (  # noqa: E402  (benchmarks/, the script's folder)
    HEADER,
    SEEDS,
    TRAIN_DAYS,
    Tick,
    default_settings,
    fleet_pair_days,
    format_row,
    library_alerts,
    score_faulty_days,
    seed_mean,
    simulate,
    window_rows,
)

from fleetscore.cli.console import progress_bar, stage_ticker  # noqa: E402
from fleetscore.evaluation.metrics import Detection, detect, events_in_range  # noqa: E402
from scoring_job.change import (  # noqa: E402
    ANNOUNCE_SENSORS,
    FEATURES,
    PARAMS,
    STD_FLOOR_SHARE,
    _robust,
    fit_params,
    pair_codes,
    stuck_windows,
)

CLIP = 6.0
"""Each window's z-score counts at most this much: one heavy-tailed reading cannot fill a sum on its own."""
K, H = 1.5, 6.0
"""The CUSUM's allowance per window and its alarm level (z-score units), chosen on tuning seeds 101-103."""


def known_level_z(features: pd.DataFrame, clean_until_ms: int) -> pd.DataFrame:
    """Per window of the measured sensors (announce sensors left out): device, sensor, window_end (epoch ms),
    z_mean (signed), z_spread (0 where the window has fewer than 2 readings), both clipped to ±`CLIP`, stuck (bool)
    and clean (bool: a training window), sorted by pair and window_end. `features`: `detection.window_rows` of a
    fleet. z_mean = (mean - level) · √n over its robust scale on the clean days (level: the median of the clean
    days' window means); z_spread = log(std + floor) less its clean-day median over its robust scale (floor: a tenth
    of the clean days' median std over windows of 2 readings or more); stuck: change-z's `stuck_windows` on its own
    fit."""
    frame = features[~features["sensor"].isin(ANNOUNCE_SENSORS)].copy()
    frame["window_end"] = frame["window_end"].astype("datetime64[ms, UTC]").astype("int64")
    frame = frame.sort_values(["device", "sensor", "window_end"], ignore_index=True)
    frame["clean"] = frame["window_end"].to_numpy() <= clean_until_ms
    out = []
    for _, pair in frame.groupby(["device", "sensor"], sort=False):
        clean = pair["clean"].to_numpy()
        n, mean, std = (pair[c].to_numpy(dtype=np.float64) for c in ("n", "mean", "std"))
        deviation = (mean - np.median(mean[clean])) * np.sqrt(n)
        with np.errstate(divide="ignore"):  # a window of no spread on a pair with no floor: -inf, clipped below
            spread = np.log(std + STD_FLOOR_SHARE * np.nanmedian(np.where(n >= 2, std, np.nan)[clean]))
        z_mean = _clipped(deviation / _robust(deviation[clean])[1])
        spread_center, spread_scale = _robust(spread[clean & (n >= 2)])
        z_spread = _clipped(np.where(n >= 2, (spread - spread_center) / spread_scale, np.nan))
        params = fit_params(pair[list(FEATURES)].to_numpy(dtype=np.float64)[clean])
        stuck = stuck_windows(pair["unchanged"].to_numpy(), params[PARAMS.index("unchanged_max")])
        out.append(pair[["device", "sensor", "window_end", "clean"]].assign(z_mean=z_mean, z_spread=z_spread,
                                                                           stuck=stuck))
    return pd.concat(out, ignore_index=True)


def _clipped(z: np.ndarray) -> np.ndarray:
    """z clipped to ±`CLIP`, 0 where NaN (a window that gives none)."""
    return np.clip(np.nan_to_num(z, nan=0.0), -CLIP, CLIP)


def cusum(z: np.ndarray, pair: np.ndarray, k: float) -> np.ndarray:
    """(rows,) the one-sided CUSUM max(0, S_before + z - k) of z (rows,) within each pair (`pair` codes, rows in
    pair and time order), from 0 at each pair's first row: the cumulative sum less its running minimum (<= 0)."""
    total = pd.Series(z - k).groupby(pair).cumsum()
    low = total.groupby(pair).cummin().clip(upper=0.0)
    return (total - low).to_numpy()


def ceiling_alerts(z: pd.DataFrame, k: float, h: float) -> pd.DataFrame:
    """The alerts of the known-level CUSUM over the faulty days: one per run of anomalous rows of a pair (windows
    without readings in between do not end a run: the sums carry over them); device, sensor, first_window_end,
    last_window_end, raised_window_end = first_window_end."""
    pair = pair_codes(z)
    z_mean = z["z_mean"].to_numpy()
    hot = ((cusum(z_mean, pair, k) > h) | (cusum(-z_mean, pair, k) > h)
           | (cusum(z["z_spread"].to_numpy(), pair, k) > h) | z["stuck"].to_numpy()) & ~z["clean"].to_numpy()
    new_pair = np.r_[True, pair[1:] != pair[:-1]]
    first = np.flatnonzero(hot & (new_pair | ~np.r_[False, hot[:-1]]))
    last = np.flatnonzero(hot & (np.r_[new_pair[1:], True] | ~np.r_[hot[1:], False]))
    ends = z["window_end"].to_numpy(dtype=np.int64)
    return pd.DataFrame({"device": z["device"].to_numpy()[first], "sensor": z["sensor"].to_numpy()[first],
                         "first_window_end": ends[first], "last_window_end": ends[last],
                         "raised_window_end": ends[first]})


def measure_seed(seed: int, pairs: int, days: float, train_days: float, ks: list[float], hs: list[float],
                 tick: Tick) -> dict[str, Detection]:
    """One seed's rows: the library defaults, then the known-level CUSUM at each (k, h)."""
    settings = default_settings()
    sim = simulate(seed, pairs, days, train_days, normal_course=False)
    faults = events_in_range(sim.faults, sim.clean_until_ms, sim.end_ms)
    features = window_rows(sim, settings)
    exposure = fleet_pair_days(sim)
    with tempfile.TemporaryDirectory(prefix="fleetscore-known-level-") as tmp:
        scored = score_faulty_days(features, sim, settings, Path(tmp) / "pack", tick)
    rows = {"library defaults": detect(library_alerts(scored, settings), faults, window_ms=settings.window_ms,
                                       pair_days=exposure)}
    z = known_level_z(features, sim.clean_until_ms)
    for k, h in sorted({(K, H), *((k, h) for k in ks for h in hs)}):
        rows[label(k, h)] = detect(ceiling_alerts(z, k, h), faults, window_ms=settings.window_ms,
                                   pair_days=exposure)
    return rows


def label(k: float, h: float) -> str:
    return f"known level, CUSUM k={k:g} h={h:g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--days", type=float, default=5.0)
    ap.add_argument("--train-days", type=float, default=TRAIN_DAYS)
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--k", default=f"{K:g}", help="comma list of CUSUM allowances (z-score units per window)")
    ap.add_argument("--h", default="4,8,10", help="comma list of CUSUM alarm levels (z-score units); with each k, "
                    "besides the chosen k and h")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    ks = [float(x) for x in args.k.split(",") if x.strip()]
    hs = [float(x) for x in args.h.split(",") if x.strip()]
    warnings.simplefilter("ignore", UserWarning)
    print(f"known-level ceiling: the varied fleets without their normal course, {args.pairs} pairs, "
          f"{args.train_days:g} clean + {args.days - args.train_days:g} faulty days, seeds {seeds}")
    per_seed = []
    with progress_bar() as bar:
        tick = stage_ticker(bar)
        for seed in seeds:
            per_seed.append(measure_seed(seed, args.pairs, args.days, args.train_days, ks, hs,
                                         lambda s, d, t, seed=seed: tick(f"seed {seed} {s}", d, t)))
    print(f"\nmean of seeds {', '.join(map(str, seeds))} (counts: the sum)\n{HEADER}")
    means = {name: seed_mean([rows[name] for rows in per_seed]) for name in per_seed[0]}
    for name, d in means.items():
        print(format_row(name, d))
    d = means[label(K, H)]
    print(f"CEILING recall={d.recall:.3f} precision={d.precision:.3f} "
          f"false_per_1000_pair_days={d.false_per_1000_pair_days:.1f} (CUSUM k={K:g} h={H:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
