"""`fleetscore evaluate` and `fleetscore report --labels` on a real SQLite database and blob folder, filled by the
real pipeline (ingest, train, two scheduled runs scored in a process pool and indexed) on a small simulated
fleet whose injected faults are the labels."""

from __future__ import annotations

import json
from datetime import timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from fleetscore import clock, db
from fleetscore.alerts.episodes import OPENING_RULES
from fleetscore.cli.evaluate import episode_rules
from fleetscore.cli.main import app
from fleetscore.context import Services, set_services
from fleetscore.evaluation import stored
from fleetscore.evaluation.stored import evaluate_stored
from fleetscore.ingest.files import ingest_file
from fleetscore.runs.service import start_run
from fleetscore.settings import load_settings
from fleetscore.sim.simulate import simulate_fleet, write_simulation
from fleetscore.training import train
from tests.integration.report.test_report import chart_regions, distinct_colours, screenshot

W = 300_000
HOUR = 3_600_000


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """6 devices × 2 sensors × 3 days (faults on the third), trained on the first 2, then two runs of 12 hours
    each; returns the CLI's environment and the faults CSV the simulator wrote."""
    folder = tmp_path_factory.mktemp("fleet")
    env = {"FLEETSCORE_SQL_URL": f"sqlite:///{folder / 'fleet.db'}", "FLEETSCORE_STORAGE": str(folder / "blobs"),
           "PARTITION_MODELS": "6", "SCORING_WORKERS": "2", "LATE_ARRIVAL_SECONDS": "300",
           "FLEETSCORE_LOCAL_SETTINGS": str(folder / "none.json")}
    settings = load_settings(**env)
    services = Services(settings)
    set_services(services)
    sim = simulate_fleet(devices=6, sensors=2, days=3, interval_seconds=60, seed=3, clean_days=2, fault_rate=1.0)
    readings, faults = write_simulation(sim, folder / "fleet.parquet")
    ingest_file(services.engine, readings, window_ms=W, naive_tz=timezone.utc)
    trained = train(services.engine, services.store, from_ms=None, until_ms=sim.clean_until_ms, min_windows=48,
                    algorithm=settings.model_algorithm, features=settings.features, window_minutes=5,
                    activate=True, params=settings.model_params, n_jobs=1)
    assert trained.models == 12
    with services.engine.begin() as conn:
        db.advance_watermark(conn, sim.clean_until_ms, clock.now_ms())
    for hours in (12, 24):
        outcome = start_run(services, sim.clean_until_ms + hours * HOUR + 10 * 60_000, trigger="test")
        assert outcome.status == "succeeded", outcome.error
    set_services(None)
    services.engine.dispose()
    return env, faults, sim


def spine_columns(rgb: np.ndarray, box: tuple[int, int, int, int], min_len: int = 150) -> list[int]:
    """x positions (clustered within 4 px) of the long vertical dark lines inside `box`: the axes' side spines."""
    top, bottom, left, right = box
    dark = rgb[top:bottom + 1, left:right + 1].max(axis=2) < 0.6
    longest = [_longest_run(dark[:, c]) for c in range(dark.shape[1])]
    cols = [left + c for c, n in enumerate(longest) if n >= min_len]
    return [c for i, c in enumerate(cols) if i == 0 or c - cols[i - 1] > 4]


def _longest_run(column: np.ndarray) -> int:
    edges = np.diff(np.concatenate([[0], column.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if len(starts) else 0


def _invoke(env: dict, *args: str):
    return CliRunner().invoke(app, list(args), env=env)


def test_evaluate_json_matches_the_deployed_alerts_and_sweeps_around_them(fleet):
    env, faults, sim = fleet
    done = _invoke(env, "evaluate", "--labels", str(faults), "--json")
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert doc["runs"] == 2 and doc["pairs"] == 12
    assert doc["from"] == clock.iso_exact(sim.clean_until_ms)
    assert doc["pair_days"] == pytest.approx(12 * (clock.to_ms(doc["until"]) - sim.clean_until_ms) / 86_400_000)
    deployed = doc["deployed"]
    labelled = pd.read_csv(faults)
    assert 0 < deployed["events"] <= len(labelled) and deployed["alerts"] > 0
    assert deployed["caught"] > 0 and deployed["median_ttd_minutes"] >= 0
    sweep = pd.DataFrame(doc["sweep"])
    assert sweep["point"].is_monotonic_increasing and (sweep["point"] == 0).sum() == 1
    assert sweep["recall"].is_monotonic_decreasing and sweep["flagged_share"].is_monotonic_decreasing
    # the rules re-run at shift 0 on the prediction files raise what the pipeline raised, file by file
    at_zero = sweep[sweep["point"] == 0].iloc[0]
    for key in ("alerts", "true_alerts", "caught", "events", "median_ttd_minutes"):
        assert at_zero[key] == pytest.approx(deployed[key]), key
    # the deployed alerts split by the rule that opened each (the index recorded it)
    by_rule = pd.DataFrame(doc["by_rule"])
    assert set(by_rule["opened_by"]) <= set(OPENING_RULES) and len(by_rule)
    assert (by_rule["alerts"].sum(), by_rule["true_alerts"].sum()) == (deployed["alerts"], deployed["true_alerts"])
    assert by_rule["false_per_1000_pair_days"].sum() == pytest.approx(deployed["false_per_1000_pair_days"])
    # the rules re-run per ALERT_PERSISTENCE: the defaults' and the deployed one, whose row is the deployed alerts
    persistence = doc["persistence"]
    table = pd.DataFrame(persistence["table"]).set_index("persistence")
    assert list(table.index) == list(dict.fromkeys(["2/3", "3/3", "3/4", "3/5", "4/4", persistence["deployed"]]))
    for key in ("alerts", "true_alerts", "caught", "events", "median_ttd_minutes"):
        assert table.loc[persistence["deployed"], key] == pytest.approx(deployed[key]), key
    assert table.loc["2/3", "alerts"] >= table.loc["3/3", "alerts"]  # 3 in a row are 2 of 3 too
    # the table a person reads
    text = _invoke(env, "evaluate", "--labels", str(faults))
    assert text.exit_code == 0, text.output
    assert "deployed alerts" in text.stdout and "threshold sweep" in text.stdout and "pair-days" in text.stdout
    assert "by the rule that opened them" in text.stdout and "ALERT_PERSISTENCE" in text.stdout


def test_evaluate_in_a_range_and_with_chosen_shifts(fleet):
    env, faults, sim = fleet
    lo, hi = sim.clean_until_ms + 13 * HOUR, sim.clean_until_ms + 19 * HOUR  # within the second run
    done = _invoke(env, "evaluate", "--labels", str(faults), "--json", "--from", clock.iso_exact(lo),
                   "--to", clock.iso_exact(hi), "--shifts", "0.5,0,-0.5")
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert (doc["from"], doc["until"], doc["runs"]) == (clock.iso_exact(lo), clock.iso_exact(hi), 1)
    assert doc["pair_days"] == pytest.approx(12 * 0.25)
    assert [row["point"] for row in doc["sweep"]] == [-0.5, 0.0, 0.5]
    nothing = _invoke(env, "evaluate", "--labels", str(faults), "--from", "2030-01-01T00:00Z")
    assert nothing.exit_code == 1 and "nothing to evaluate" in nothing.output


@pytest.mark.parametrize(("content", "args", "message"), [
    (None, (), "no such file"),
    ("device,sensor,begin,end\nd-0001,s,2026-01-07T10:00Z,2026-01-07T11:00Z\n", (), "missing column(s) start"),
    ("device,sensor,start,end\nd-0001,s,soon,2026-01-07T11:00Z\n", (), "not ISO-8601 or epoch ms"),
    ("device,sensor,start,end\n", ("--from", "not-a-time"), "--from"),
    ("device,sensor,start,end\n", ("--shifts", "a,b"), "--shifts"),
    ("device,sensor,start,end\n", ("--persistence", "3/2"), "1 <= k <= n"),
])
def test_bad_input_exits_2_with_the_reason(fleet, tmp_path, content, args, message):
    env, _, _ = fleet
    labels = tmp_path / "labels.csv"
    if content is not None:
        labels.write_text(content, encoding="utf-8")
    done = _invoke(env, "evaluate", "--labels", str(labels), *args)
    assert done.exit_code == 2, done.output
    assert message in " ".join(done.output.split())


def test_report_with_labels_adds_the_detection_section_and_its_plot(fleet, tmp_path):
    env, faults, _ = fleet
    plain, labelled = tmp_path / "plain.html", tmp_path / "labelled.html"
    assert _invoke(env, "report", "--out", str(plain)).exit_code == 0
    done = _invoke(env, "report", "--out", str(labelled), "--labels", str(faults))
    assert done.exit_code == 0, done.output
    page, before = labelled.read_text(encoding="utf-8"), plain.read_text(encoding="utf-8")
    assert 'id="evaluation"' in page and 'id="evaluation"' not in before
    assert page.count("data:image/png") == before.count("data:image/png") + 1
    for label in ("precision", "recall", "false alerts / 1,000 pair-days", "median minutes to detect"):
        assert f"<span>{label}</span>" in page
    assert "windows flagged" in page and "<script" not in page
    assert page.count("<th>opened by</th>") == before.count("<th>opened by</th>") + 1  # the per-rule table
    assert "<th>ALERT_PERSISTENCE</th>" in page and "<th>ALERT_PERSISTENCE</th>" not in before
    # in Chromium: the section comes first, its figure two axes side by side (four spines), where the page
    # without labels starts with a pair's plot (two axes stacked: two spines)
    shot, plain_shot = screenshot(labelled, tmp_path), screenshot(plain, tmp_path)
    first, plain_first = chart_regions(shot)[0], chart_regions(plain_shot)[0]
    assert first[1] - first[0] > 250 and first[3] - first[2] > 900, first
    assert (len(spine_columns(shot, first)), len(spine_columns(plain_shot, plain_first))) == (4, 2)
    region = shot[first[0]:first[1], first[2]:first[3] + 1]
    assert (region.min(axis=2) < 0.94).mean() > 0.03 and distinct_colours(region) > 50
    ring = (np.abs(region - np.array([0xD3, 0x2F, 0x2F]) / 255).max(axis=2) < 0.08).sum()
    assert ring > 30, ring  # the deployed operating point, ringed in red on both axes
    bad = _invoke(env, "report", "--out", str(tmp_path / "x.html"), "--labels", str(tmp_path / "missing.csv"))
    assert bad.exit_code == 2 and "no such file" in " ".join(bad.output.split()) and not (tmp_path / "x.html").exists()


def test_the_demo_faults_file_is_a_labels_file(fleet):
    _, faults, _ = fleet
    assert Path(faults).name == "fleet.faults.csv"
    assert pd.read_csv(faults).columns[:4].tolist() == ["device", "sensor", "start", "end"]


def test_the_demo_s_deployed_figures_equal_evaluate_stored_s_without_loading_every_pair(fleet, monkeypatch):
    env, _, sim = fleet
    services = Services(load_settings(**env))
    rules = episode_rules(services.settings)
    try:
        whole = evaluate_stored(services.engine, services.store, sim.faults, rules, points=[0.0]).deployed
        loaded: list = []
        load = stored.load_scored_windows

        def recorded(*args, pairs=None, **kwargs):
            loaded.append(pairs)
            return load(*args, pairs=pairs, **kwargs)

        monkeypatch.setattr(stored, "load_scored_windows", recorded)
        light = stored.evaluate_deployed(services.engine, services.store, sim.faults, rules)
        with services.engine.connect() as conn:
            alerted = {tuple(r) for r in conn.execute(sa.select(db.alerts.c.device, db.alerts.c.sensor)).all()}
    finally:
        services.engine.dispose()
    assert whole.events > 0 and whole.caught > 0 and whole.false_alerts >= 0
    assert light.as_dict() == whole.as_dict()
    assert len(loaded) == 1 and set(loaded[0]) == alerted and len(alerted) < 12  # the alerted pairs only


@pytest.mark.parametrize("chunk", [1, 5])
def test_the_sweep_a_chunk_of_pairs_at_a_time_equals_the_sweep_over_every_window_at_once(fleet, monkeypatch, chunk):
    from fleetscore.evaluation.sweep import default_points, flagged_share, shifted_episodes, sweep
    from fleetscore.report.data import load_scored_windows

    env, _, sim = fleet
    services = Services(load_settings(**env))
    rules = episode_rules(services.settings)
    try:
        lo, hi, run_ids = stored.scored_range(services.engine, None, None)
        whole = stored._scored_in(load_scored_windows(services.store, run_ids, stored.EXTRA_COLUMNS)[0], lo, hi)
        events = stored.events_in_range(sim.faults, lo, hi)
        exposure = stored.pair_days(len(whole[["device", "sensor"]].drop_duplicates()), lo, hi)
        points = default_points(whole)
        expected = sweep(shifted_episodes(whole, rules), points, events, window_ms=W, pair_days=exposure)
        expected["flagged_share"] = flagged_share(whole, points)
        monkeypatch.setattr(stored, "SWEEP_CHUNK_PAIRS", chunk)
        got = evaluate_stored(services.engine, services.store, sim.faults, rules)
    finally:
        services.engine.dispose()
    assert len(points) > 3 and expected["alerts"].max() > 0 and expected["caught"].max() > 0
    pd.testing.assert_frame_equal(got.sweep, expected)
    assert got.pairs == 12 and got.pair_days == exposure
