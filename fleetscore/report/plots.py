"""The report's figures, each returned as a base64 PNG string to embed in the page.

Drawn with matplotlib's object-oriented API (`matplotlib.figure.Figure` on the Agg canvas, no pyplot global
state), so drawing is thread-safe and needs no display. Times on the x axes are epoch ms UTC.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fleetscore.report.data import PairData

STATUS_COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "partial": "#ef6c00"}
"""Bar colour per terminal run status (`fleetscore.db.RUN_TERMINAL`)."""
OTHER_STATUS_COLOUR = "#78909c"
ALERT_SPAN_COLOURS = {"open": ("#ef5350", 0.35), "closed": ("#ffb74d", 0.45)}
"""Alert episode shading per alert status: (colour, legend alpha); the plot itself shades at alpha 0.22."""
ANOMALY_RED = "#d32f2f"
DEFAULT_SLOT_MS = 3_600_000.0


def plot_pair(pair: PairData) -> str:
    """The pair's window means with a min–max band, scores against their model's threshold, anomalies and alert
    spans."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    _shade_alerts((top, bottom), pair)
    _draw_windows(top, pair)
    _draw_scores(bottom, pair)
    handles, labels = top.get_legend_handles_labels()
    h2, l2 = bottom.get_legend_handles_labels()
    statuses = set(pair.alerts["status"]) if not pair.alerts.empty else set()
    spans = [(Patch(color=colour, alpha=alpha), f"{status} alert")
             for status, (colour, alpha) in ALERT_SPAN_COLOURS.items() if status in statuses]
    fig.legend(handles + h2 + [h for h, _ in spans], labels + l2 + [lbl for _, lbl in spans],
               loc="outside upper left", ncols=8, fontsize=8, frameon=False)
    return _png(fig)


def _shade_alerts(axes: Iterable[Axes], pair: PairData) -> None:
    """One shaded span per alert episode, from its first window's start to its last window's end."""
    axes = list(axes)
    for _, alert in pair.alerts.iterrows():
        start = _dt([int(alert["first_window_end"]) - pair.window_ms])[0]
        end = _dt([int(alert["last_window_end"])])[0]
        colour = ALERT_SPAN_COLOURS["open" if alert["status"] == "open" else "closed"][0]
        for ax in axes:
            ax.axvspan(start, end, color=colour, alpha=0.22, lw=0)


def _draw_windows(ax: Axes, pair: PairData) -> None:
    """Window means (sensor unit) with their min–max band; anomalous windows as red points."""
    wins = pair.windows
    if not wins.empty:
        x = _dt(wins["window_end"])
        ax.fill_between(x, wins["min"], wins["max"], color="#90caf9", alpha=0.55, lw=0, label="min–max")
        ax.plot(x, wins["mean"], color="#1565c0", lw=1.2, label="mean")
    anomalous = set(pair.anomalies["window_end"].astype("int64")) if not pair.anomalies.empty else set()
    if not pair.scores.empty:
        anomalous |= set(pair.scores.loc[pair.scores["score"] > 0, "window_end"].astype("int64"))
    marks = wins[wins["window_end"].isin(anomalous)] if anomalous else wins.iloc[:0]
    if not marks.empty:
        ax.scatter(_dt(marks["window_end"]), marks["mean"], s=22, color=ANOMALY_RED, zorder=5,
                   label="anomalous window")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)


def _draw_scores(ax: Axes, pair: PairData) -> None:
    """Scores of the scored windows and of the anomalies against each window's model threshold (a step line; 0
    where the prediction files are not read); the date axis."""
    scored = pair.scores.dropna(subset=["score"])
    if not scored.empty:
        ax.plot(_dt(scored["window_end"]), scored["score"], color="#6a1b9a", lw=1.0, marker=".", ms=3,
                label="score")
    if not pair.anomalies.empty:
        ax.scatter(_dt(pair.anomalies["window_end"]), pair.anomalies["score"], s=22, color=ANOMALY_RED, zorder=5,
                   label="_nolegend_")
    with_threshold = scored.dropna(subset=["threshold"]) if "threshold" in scored else scored.iloc[:0]
    if with_threshold.empty:
        ax.axhline(0.0, color="#424242", lw=1, ls="--", label="threshold 0")
    else:
        ax.step(_dt(with_threshold["window_end"]), with_threshold["threshold"], where="mid", color="#424242", lw=1,
                ls="--", label="threshold")
    low, high = ax.get_ylim()
    ax.set_ylim(low, max(high, 0.15 * (high - low)))  # the threshold never sits on the frame
    ax.set_ylabel("score")
    ax.set_xlabel("window end (UTC)")
    ax.grid(alpha=0.3)
    if scored.empty:
        ax.text(0.99, 0.92, "no prediction files read: only anomalous windows' scores", ha="right",
                transform=ax.transAxes, fontsize=8, color="#616161", va="top")
    _date_axis(ax)


def plot_runs(runs: pd.DataFrame, selected: str | None = None) -> str:
    """Per run: duration (coloured by status), windows scored and anomalies, over the schedule slots."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = _dt(runs["slot"])
    width = np.timedelta64(max(int(_slot_step_ms(runs["slot"]) * 0.7), 1), "ms")
    colours = [STATUS_COLOURS.get(str(s), OTHER_STATUS_COLOUR) for s in runs["status"]]
    edges = ["#000" if r == selected else c for r, c in zip(runs["run_id"], colours, strict=True)]
    top.bar(x, runs["duration_s"].fillna(0.0).to_numpy(dtype=float), width=width, color=colours, edgecolor=edges)
    top.set_ylabel("run duration (s)\nclaimed → finished")
    top.grid(alpha=0.3, axis="y")
    bottom.bar(x, runs["windows"].fillna(0).to_numpy(dtype=float), width=width, color="#90caf9")
    bottom.set_ylabel("windows scored")
    twin = bottom.twinx()
    anomalies = runs["anomalies"].fillna(0).to_numpy(dtype=float)
    twin.plot(x, anomalies, color=ANOMALY_RED, marker="o", ms=3, lw=1.2)
    twin.set_ylabel("anomalies", color=ANOMALY_RED)
    twin.set_ylim(0, max(1.0, float(anomalies.max(initial=0.0)) * 1.15))
    seen = list(dict.fromkeys(str(s) for s in runs["status"]))
    handles = [Patch(color=STATUS_COLOURS.get(s, OTHER_STATUS_COLOUR)) for s in seen]
    handles += [Patch(color="#90caf9"), Line2D([], [], color=ANOMALY_RED, marker="o", ms=3)]
    fig.legend(handles, [f"run {s}" for s in seen] + ["windows scored", "anomalies"], loc="outside upper left",
               ncols=len(handles), fontsize=8, frameon=False)
    bottom.set_xlabel("schedule slot (UTC)")
    bottom.grid(alpha=0.3, axis="y")
    _date_axis(bottom)
    return _png(fig)


def _slot_step_ms(slots: pd.Series) -> float:
    """The schedule's period (ms): the median gap between slots (an hour when it cannot be told)."""
    values = slots.to_numpy(dtype="int64")
    if len(values) > 1 and np.any(np.diff(values) > 0):
        return float(np.median(np.diff(values)))
    return DEFAULT_SLOT_MS


def plot_stage_times(runs: pd.DataFrame) -> str | None:
    """Total seconds per stage over all runs (from runs.timings); None when no run recorded timings."""
    totals: dict[str, float] = {}
    for timings in runs["timings"]:
        for stage, seconds in (timings or {}).items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    if not totals:
        return None
    stages = sorted(totals, key=totals.get)
    return _labelled_bars(stages, [totals[st] for st in stages], label=lambda v: f" {v:.2f} s", color="#26a69a",
                          xlabel="seconds, summed over runs", title="Time per stage",
                          height=0.5 + 0.38 * len(stages) + 0.6, fontsize=8, margin=0.12)


def plot_dead_letters(dead: pd.DataFrame) -> str:
    """Dead letters by reason, most frequent on top."""
    dead = dead.sort_values("count")
    return _labelled_bars(list(dead["reason"]), dead["count"].to_numpy(dtype=float).tolist(),
                          label=lambda v: f" {int(v)}", color="#ff8a65", xlabel="dead letters",
                          title="Dead letters by reason", height=0.9 + 0.42 * len(dead), fontsize=9, margin=0.1)


def _labelled_bars(names: list[str], values: list[float], *, label: Callable[[float], str], color: str,
                   xlabel: str, title: str, height: float, fontsize: int, margin: float) -> str:
    """Horizontal bars, bottom to top in the given order, each with its value written at its end;
    `height` in inches."""
    fig = Figure(figsize=(12, height), layout="constrained")
    ax = fig.subplots()
    ax.barh([_mpl_text(n) for n in names], values, color=color)
    for i, v in enumerate(values):
        ax.text(v, i, label(v), va="center", fontsize=fontsize)
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left", fontsize=11)
    ax.margins(x=margin)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def _dt(ms: object) -> np.ndarray:
    """Epoch ms → naive datetime64 (UTC) for matplotlib's date axis."""
    return np.asarray(ms, dtype="int64").astype("datetime64[ms]")


def _mpl_text(text: str) -> str:
    """Database text for a matplotlib label: no mathtext from a stray '$'."""
    return str(text).replace("$", r"\$")


def _date_axis(ax: Axes) -> None:
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _png(fig: Figure) -> str:
    """The figure as a base64 PNG (100 dpi)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_precision_recall(sweep: pd.DataFrame) -> str:
    """The threshold sweep (`fleetscore.evaluation.sweep`): precision against recall (left) and false alerts per
    1,000 pair-days against recall (right), one point per shift, labelled with it; the deployed point (shift 0)
    ringed."""
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    order = sweep.sort_values("recall", kind="stable")
    _sweep_curve(left, order, "precision")
    left.set_ylabel("precision (alerts that match a labelled event)")
    left.set_ylim(-0.03, 1.03)
    _sweep_curve(right, order, "false_per_1000_pair_days")
    right.set_ylabel("false alerts per 1,000 pair-days")
    right.set_yscale("symlog", linthresh=1.0)
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.set_xlabel("recall (labelled events alerted)")
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    fig.suptitle("Operating points: the alert threshold shifted (score units; 0 = deployed)", x=0.01, ha="left",
                 fontsize=11)
    return _png(fig)


def _sweep_curve(ax: Axes, sweep: pd.DataFrame, column: str) -> None:
    """One column of the sweep against recall: a line through the points, each labelled with its shift, the
    deployed one (shift 0) ringed in red."""
    x = sweep["recall"].to_numpy(dtype=float)
    y = sweep[column].to_numpy(dtype=float)
    ax.plot(x, y, color="#1565c0", lw=1.2, marker="o", ms=4)
    for xi, yi, point in zip(x, y, sweep["point"], strict=True):
        if np.isfinite(yi):
            ax.annotate(f"{point:+.3g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color="#424242")
    deployed = sweep["point"].to_numpy(dtype=float) == 0
    if deployed.any():
        ax.scatter(x[deployed], y[deployed], s=110, facecolors="none", edgecolors=ANOMALY_RED, lw=1.8, zorder=5,
                   label="deployed (shift 0)")
        ax.legend(loc="best", fontsize=8, frameon=False)
