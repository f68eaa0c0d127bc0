"""The report page: a `ReportData` rendered as one self-contained HTML page.

Plots are embedded as base64 PNG, so the file opens anywhere without a server or a network; every value
from the database is escaped. Times are shown as UTC ISO-8601.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from fleetscore import clock
from fleetscore.alerts.severity import SEVERITY_RANK
from fleetscore.evaluation.stored import Evaluation
from fleetscore.report.data import ReportData
from fleetscore.report.plots import (
    plot_dead_letters,
    plot_pair,
    plot_precision_recall,
    plot_runs,
    plot_stage_times,
)

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1240px;
color:#212121;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e0e0e0}
.meta{color:#616161;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{border:1px solid #e0e0e0;border-radius:8px;padding:10px 16px;min-width:120px}
.card b{display:block;font-size:22px}.card span{color:#616161;font-size:12px}
.empty{padding:32px;border:2px dashed #bdbdbd;border-radius:8px;text-align:center;font-size:20px;color:#424242}
img{max-width:100%;display:block;margin:6px 0 14px}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{border-bottom:1px solid #eee;padding:4px 8px;
text-align:left}th{background:#fafafa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev-critical,.sev-high{color:#b71c1c;font-weight:600}.open{color:#c62828}.closed{color:#2e7d32}
.note{color:#616161;font-size:12px}
"""
SUMMARY_CARDS = (("runs", "runs"), ("windows_scored", "windows scored"), ("anomalies", "anomalies"),
                 ("open_alerts", "open alerts"), ("closed_alerts", "closed alerts"),
                 ("dead_letters", "dead letters"), ("windows", "windows stored"))
"""(summary key, card label) in the order the header shows them."""
RUNS_TABLE_ROWS = 15


def render_report(data: ReportData, evaluation: Evaluation | None = None) -> str:
    """The report as one self-contained HTML page; with `evaluation` (labels given), its detection section."""
    title = "fleetscore report" + (f" — run {data.run_id}" if data.run_id else "")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"]
    parts += _header(data, title)
    if data.summary["runs"] == 0:
        parts.append('<div class="empty" id="no-runs">No runs yet — nothing has been scored. '
                     "Ingest readings and let the scoring schedule fire (or run <code>fleetscore demo</code>).</div>")
    else:
        if evaluation is not None:
            parts += _evaluation_section(evaluation)
        parts += _pairs_section(data)
        parts += _runs_section(data)
    parts += _dead_letters_section(data)
    if data.summary["runs"] or not data.alerts.empty:
        parts += _alerts_section(data)
    parts += [f'<p class="note">{_e(note)}</p>' for note in data.notes]
    parts.append("</body></html>")
    return "\n".join(parts)


def _header(data: ReportData, title: str) -> list[str]:
    """Title, generation time, the summary cards, runs by status and the selected run's line."""
    s = data.summary
    parts = [f"<header><h1>{_e(title)}</h1>",
             f'<div class="meta">generated {_e(_iso(data.generated_at_ms))} · times in UTC · scores from '
             f"{_e(data.scores_source)}</div>",
             '<div class="cards" id="summary">',
             *(_card(s[key], label) for key, label in SUMMARY_CARDS),
             "</div>"]
    if s["runs_by_status"]:
        parts.append('<div class="meta">runs by status: '
                     + ", ".join(f"{_e(k)} {_e(v)}" for k, v in s["runs_by_status"].items()) + "</div>")
    if data.selected_run is not None:
        r = data.selected_run
        parts.append(
            f'<div class="meta">run {_e(r["run_id"])}: {_e(r.get("status"))}, slot {_e(_iso(r.get("slot")))}, '
            f'windows ({_e(_iso(r.get("window_from")))}, {_e(_iso(r.get("window_until")))}], '
            f'{_e(r.get("windows"))} scored, {_e(r.get("anomalies"))} anomalies, '
            f'model {_e(r.get("model_version"))}</div>')
    parts.append("</header>")
    return parts


def _pairs_section(data: ReportData) -> list[str]:
    parts = ['<section id="pairs"><h2>Alerted device · sensor pairs</h2>']
    if data.pairs:
        parts.append('<p class="note">Window mean (line) with its min–max band; score of each scored window '
                     "below it against the threshold 0 (above = anomalous); red points are anomalous windows; "
                     "shaded spans are alert episodes (red open, orange closed). Most severe first.</p>")
        for pair in data.pairs:
            parts.append(f"<h3>{_e(pair.device)} · {_e(pair.sensor)}</h3>")
            parts.append(_img(plot_pair(pair), f"series of {pair.device} {pair.sensor}"))
    else:
        parts.append('<p class="note">No alerts and no anomalies.</p>')
    parts.append("</section>")
    return parts


def _evaluation_section(ev: Evaluation) -> list[str]:
    """The deployed alerts against the labelled events (cards), the threshold sweep (plot and table)."""
    d = ev.deployed
    cards = [(f"{d.precision:.2f}", "precision"), (f"{d.recall:.2f}", "recall"),
             (_number(d.false_per_1000_pair_days, ".1f"), "false alerts / 1,000 pair-days"),
             (_number(d.median_ttd_minutes, ".0f"), "median minutes to detect"),
             (f"{d.caught}/{d.events}", "labelled events caught"), (f"{d.true_alerts}/{d.alerts}", "alerts true")]
    parts = ['<section id="evaluation"><h2>Detection against the labels</h2>',
             f'<p class="note">Scored windows ({_e(_iso(ev.from_ms))}, {_e(_iso(ev.until_ms))}] of {ev.runs} run(s): '
             f"{ev.pairs} pairs, {ev.pair_days:.1f} pair-days. An alert is true when it overlaps a labelled event of "
             f"its pair (widened by {ev.tolerance_windows} window(s)); time to detect runs from the event's start "
             "to the window that raised the alert.</p>",
             '<div class="cards" id="evaluation-cards">', *(_card(v, label) for v, label in cards), "</div>",
             _rule_table(ev.by_rule),
             _img(plot_precision_recall(ev.sweep), "precision and false alerts against recall per threshold shift"),
             _sweep_table(ev.sweep), _persistence_table(ev)]
    parts += [f'<p class="note">{_e(note)}</p>' for note in ev.notes]
    parts.append("</section>")
    return parts


def _rule_table(by_rule: pd.DataFrame) -> str:
    """The deployed alerts per rule that opened them (`metrics.by_opening_rule`)."""
    head = ("opened by", "alerts", "true", "false", "precision", "false / 1,000 pair-days")
    rows = [f"<tr><td>{_e(r.opened_by)}</td>" + "".join(f'<td class="num">{_e(c)}</td>' for c in (
        r.alerts, r.true_alerts, r.false_alerts, f"{r.precision:.3f}", _number(r.false_per_1000_pair_days, ".1f")))
        + "</tr>" for r in by_rule.itertuples()]
    return _table(head, rows) if rows else ""


FIGURE_HEADS = ("alerts", "true", "false", "caught / events", "precision", "recall", "false / 1,000 pair-days",
                "median TTD (min)")
"""The detection figures' columns of the sweep and persistence tables (`_figure_cells`)."""


def _sweep_table(sweep: pd.DataFrame) -> str:
    rows = [_bold_row((f"{r.point:+.4g}", f"{r.flagged_share:.3%}", *_figure_cells(r)), r.point == 0)
            for r in sweep.itertuples()]
    return _table(("shift", "windows flagged", *FIGURE_HEADS), rows)


def _persistence_table(ev: Evaluation) -> str:
    """The rules re-run with each ALERT_PERSISTENCE compared, thresholds as deployed (the deployed one in bold)."""
    rows = [_bold_row((r.persistence, *_figure_cells(r)), r.persistence == ev.deployed_persistence)
            for r in ev.by_persistence.itertuples()]
    return _table(("ALERT_PERSISTENCE", *FIGURE_HEADS), rows)


def _figure_cells(r: Any) -> tuple[Any, ...]:
    """A sweep or persistence row's figures as cell texts (`FIGURE_HEADS`)."""
    return (r.alerts, r.true_alerts, r.false_alerts, f"{r.caught} / {r.events}", f"{r.precision:.3f}",
            f"{r.recall:.3f}", _number(r.false_per_1000_pair_days, ".1f"), _number(r.median_ttd_minutes, ".0f"))


def _bold_row(cells: tuple[Any, ...], bold: bool) -> str:
    style = ' style="font-weight:600"' if bold else ""
    return f"<tr{style}>" + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>"


def _number(value: float, spec: str) -> str:
    return "-" if value is None or np.isnan(value) else format(value, spec)


def _runs_section(data: ReportData) -> list[str]:
    parts = ['<section id="runs"><h2>Runs</h2>', _img(plot_runs(data.runs, data.run_id), "run durations and counts")]
    stages = plot_stage_times(data.runs)
    if stages is not None:
        parts.append(_img(stages, "time per stage"))
    parts += [_runs_table(data.runs), "</section>"]
    return parts


def _dead_letters_section(data: ReportData) -> list[str]:
    if data.dead_letters.empty:
        body = '<p class="note">No dead letters.</p>'
    else:
        body = _img(plot_dead_letters(data.dead_letters), "dead letters by reason")
    return ['<section id="dead-letters"><h2>Dead letters</h2>', body, "</section>"]


def _alerts_section(data: ReportData) -> list[str]:
    parts = ['<section id="alerts"><h2>Alerts</h2>']
    if data.alerts.empty:
        parts.append('<p class="note">No alerts.</p>')
    else:
        total = data.summary["open_alerts"] + data.summary["closed_alerts"]
        if total > len(data.alerts):
            parts.append(f'<p class="note">The {len(data.alerts)} most severe of {total}.</p>')
        parts.append(_alerts_table(data.alerts))
    parts.append("</section>")
    return parts


def _alerts_table(alerts: pd.DataFrame) -> str:
    head = ("alert", "device", "sensor", "status", "severity", "opened by", "first window", "last window", "windows",
            "max score", "run")
    rows = []
    for _, a in alerts.iterrows():
        sev = str(a["severity"]).lower()
        rows.append(
            "<tr>"
            f"<td>{_e(a['alert_id'])}</td><td>{_e(a['device'])}</td><td>{_e(a['sensor'])}</td>"
            f'<td class="{_e(a["status"]) if a["status"] in ("open", "closed") else ""}">{_e(a["status"])}</td>'
            f'<td class="sev-{_e(sev) if sev in SEVERITY_RANK else "other"}">{_e(a["severity"])}</td>'
            f"<td>{_e(a['opened_by'])}</td>"
            f"<td>{_e(_iso(a['first_window_end']))}</td><td>{_e(_iso(a['last_window_end']))}</td>"
            f'<td class="num">{_e(a["windows"])}</td><td class="num">{float(a["max_score"]):.3f}</td>'
            f"<td>{_e(a['run_id'])}</td></tr>")
    return _table(head, rows)


def _runs_table(runs: pd.DataFrame) -> str:
    """The latest RUNS_TABLE_ROWS runs, newest first."""
    head = ("run", "status", "backend", "model", "claimed", "duration (s)", "windows", "no model", "failures",
            "anomalies")
    rows = []
    for _, r in runs.iloc[::-1].head(RUNS_TABLE_ROWS).iterrows():
        dur = "" if pd.isna(r["duration_s"]) else f"{r['duration_s']:.1f}"
        num = [("" if pd.isna(r[c]) else int(r[c])) for c in ("windows", "windows_no_model", "failures", "anomalies")]
        rows.append(
            f"<tr><td>{_e(r['run_id'])}</td><td>{_e(r['status'])}</td><td>{_e(r['backend'])}</td>"
            f"<td>{_e(r['model_version'])}</td><td>{_e(_iso(r['claimed_at']))}</td><td class='num'>{dur}</td>"
            + "".join(f"<td class='num'>{_e(v)}</td>" for v in num) + "</tr>")
    return _table(head, rows)


def _table(head: tuple[str, ...], rows: list[str]) -> str:
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _iso(ms: Any) -> str:
    """Epoch ms as UTC ISO-8601 with a Z, milliseconds only when there are any ('' for a missing time)."""
    return clock.iso_exact(ms, missing="")


def _e(value: Any) -> str:
    """Escaped text ('' for None and NaN)."""
    return html.escape("" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _card(value: Any, label: str) -> str:
    return f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'
