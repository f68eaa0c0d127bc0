"""The alerts page in headless Chromium (the system's /usr/bin/chromium driven by Playwright) against a real
`fleetscore up` over a real SQLite database holding alerts: the key is asked for, the list, its filters, one alert
opened with the chart of its pair, acknowledged and resolved from the page — each checked in the database too.

FLEETSCORE_PAGE_SCREENSHOT=docs/alerts-page.png also writes the test's screenshot there (the README's picture)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.alerts import store as alert_store
from fleetscore.settings import load_settings
from fleetscore.storage import open_store
from tests.helpers.fleet import RUN_A, T0, Q, W, fire, put_pack, put_run, rows_of
from tests.helpers.host import YEARLY, Up

CHROMIUM = "/usr/bin/chromium"
KEY = "page-test-key"
N = 48
"""Windows per pair in the seeded run (4 hours of 5-minute windows)."""
PAIRS = {  # (device, sensor): (base value, {window index: score}, threshold) -> the severity it gets from Q
    ("pump-07", "vibration"): (3.0, {43: 0.6, 44: 1.4, 45: 2.6, 46: 3.1, 47: 1.2}, 0.0),  # critical, open
    ("pump-03", "temp"): (41.0, {46: 0.5, 47: 0.4}, 0.0),  # high, open
    ("fan-12", "rh"): (55.0, {8: 0.1}, 0.0),  # medium, closed after 3 normal windows
    ("fan-02", "temp"): (22.0, {40: -0.1, 41: -0.05}, -0.2),  # low, closed (then resolved below)
}


def pair_rows(device: str, sensor: str, hot: dict[int, float], threshold: float) -> list[dict]:
    """N windows of the pair from T0, scored a little below the threshold except the `hot` ones."""
    return [{"device": device, "sensor": sensor, "window_end": T0 + i * W, "status": "ok", "error": None,
             "score": hot.get(i, threshold - 0.8 + 0.25 * math.sin(i / 3)), "threshold": threshold,
             "threshold_strong": threshold + 2.0} for i in range(N)]


def seed(settings) -> dict[tuple[str, str], str]:
    """The run's windows, its prediction file indexed (alerts raised as the blob trigger would), the model pack whose
    quantiles grade them; returns alert ids by pair."""
    engine = db.create_db_engine(settings.sql_url)
    db.upgrade(engine)
    store = open_store(settings.storage)
    put_pack(store, "v1", {pair: Q for pair in PAIRS})
    put_run(engine, store, RUN_A, T0 - W, T0 + (N - 1) * W, {"part-00000.parquet": N * len(PAIRS)})
    windows = []
    for (device, sensor), (base, hot, _) in PAIRS.items():
        for i in range(N):
            mean = base + 0.4 * math.sin(i / 4) + (3.0 if i in hot else 0.0)
            windows.append({"device": device, "sensor": sensor, "window_end": T0 + i * W, "n": 5, "sum": 5 * mean,
                            "sumsq": 5 * mean * mean + 4 * 0.04, "min": mean - 0.3, "max": mean + 0.3,
                            "updated_at": T0 + N * W})
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), windows)
    fire(engine, store, settings, RUN_A, [r for pair, (_, hot, t) in PAIRS.items() for r in pair_rows(*pair, hot, t)])
    ids = {(a["device"], a["sensor"]): a["alert_id"] for a in rows_of(engine, db.alerts)}
    engine.dispose()
    return ids


def alert_row(settings, alert_id: str) -> dict:
    engine = db.create_db_engine(settings.sql_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(db.alerts).where(db.alerts.c.alert_id == alert_id)).mappings().one())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_the_alerts_page_lists_filters_opens_and_acknowledges_in_chromium(tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (make test installs it)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")  # the system Chromium only, never a download
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415 - a test-only dependency, loaded here

    env = {**os.environ, "FLEETSCORE_SQL_URL": f"sqlite:///{tmp_path / 'fleet.db'}", "ALERT_PERSISTENCE": "1/1",
           "FLEETSCORE_STORAGE": str(tmp_path / "blobs"), "SCORING_SCHEDULE": YEARLY, "FLEETSCORE_API_KEY": KEY,
           "FLEETSCORE_LOCAL_SETTINGS": str(tmp_path / "no-local.settings.json"), "PYTHONUNBUFFERED": "1"}
    settings = load_settings(**{k: env[k] for k in ("FLEETSCORE_SQL_URL", "FLEETSCORE_STORAGE", "ALERT_PERSISTENCE")})
    ids = seed(settings)
    assert set(ids) == set(PAIRS)
    engine = db.create_db_engine(settings.sql_url)
    with engine.begin() as conn:  # one alert someone resolved already
        alert_store.resolve(conn, ids["fan-02", "temp"], by="bo", note="sensor swapped", now=T0 + N * W)
    engine.dispose()
    severities = {pair: alert_row(settings, i)["severity"] for pair, i in ids.items()}
    assert severities == {("pump-07", "vibration"): "critical", ("pump-03", "temp"): "high",
                          ("fan-12", "rh"): "medium", ("fan-02", "temp"): "low"}

    host = Up(tmp_path, env, "up")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1360, "height": 640})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            keys_sent: list[str | None] = []
            page.on("request", lambda r: keys_sent.append(r.headers.get("x-functions-key"))
                    if "/api/alerts" in r.url else None)
            response = page.goto(f"{host.url}/api/ui")
            assert response is not None and response.status == 200
            assert KEY not in response.text() and KEY not in page.url  # the key is never in what is served

            # the key: a wrong one is refused and asked for again, the right one opens the list
            expect(page.locator("#keyform")).to_be_visible()
            page.fill("#key", "wrong")
            page.click("#keyform button")
            expect(page.locator("#keyerror")).to_contain_text("key")
            expect(page.locator("#keyform")).to_be_visible()
            page.fill("#key", KEY)
            page.click("#keyform button")
            rows = page.locator("#alerts tbody tr")
            expect(rows).to_have_count(4)
            assert set(keys_sent) == {"wrong", KEY} and KEY not in page.url
            # newest episode first, as the API orders them
            expect(rows.nth(0)).to_contain_text("pump-03")
            expect(rows.nth(2)).to_contain_text("fan-02")
            expect(rows.nth(2)).to_contain_text("resolved")
            expect(page.locator("#health")).to_contain_text(RUN_A)

            # filters: severity, status, device, sensor, time range; each reflected in the page's URL (no key)
            page.select_option("#filters select[name=severity]", "high,critical")
            page.click("#filters button:text('Apply')")
            expect(rows).to_have_count(2)
            assert "severity=high%2Ccritical" in page.url and KEY not in page.url
            page.select_option("#filters select[name=severity]", "")
            page.select_option("#filters select[name=state]", "closed")
            page.click("#filters button:text('Apply')")
            expect(rows).to_have_count(1)
            expect(rows.nth(0)).to_contain_text("fan-12")
            page.select_option("#filters select[name=state]", "")
            page.fill("#filters input[name=device]", "pump-03")
            page.click("#filters button:text('Apply')")
            expect(rows).to_have_count(1)
            expect(rows.nth(0)).to_contain_text("pump-03")
            page.fill("#filters input[name=device]", "")
            page.fill("#filters input[name=sensor]", "temp")
            page.click("#filters button:text('Apply')")
            expect(rows).to_have_count(2)
            page.fill("#filters input[name=sensor]", "")
            page.fill("#filters input[name=from]", "2026-11-23T13:30")  # episodes overlapping 13:30-13:45 UTC
            page.fill("#filters input[name=to]", "2026-11-23T13:45")
            page.click("#filters button:text('Apply')")
            expect(rows).to_have_count(1)
            expect(rows.nth(0)).to_contain_text("pump-07")
            page.click("#filters button[type=reset]")
            expect(rows).to_have_count(4)

            # open: the alert, its revisions and the chart of its pair around the episode
            critical = ids["pump-07", "vibration"]
            page.click(f"#alerts tbody tr[data-id='{critical}']")
            expect(page.locator("#detail")).to_be_visible()
            expect(page.locator("#title")).to_have_text("pump-07 / vibration")
            expect(page.locator("#meta")).to_contain_text("critical")
            expect(page.locator("#meta")).to_contain_text("opened on k of its last n windows anomalous")  # 1/1
            chart = page.locator("#chart svg")
            expect(chart.locator("circle.anomaly")).to_have_count(5)
            expect(chart.locator(f"rect.span[data-alert='{critical}']")).to_have_count(2)  # both panels
            expect(chart.locator("polyline.score")).to_have_count(1)
            expect(chart.locator("polyline.threshold")).to_have_count(1)
            expect(chart.locator("polyline.threshold-high")).to_have_count(1)
            expect(chart.locator("polyline.mean")).to_have_count(1)
            expect(page.locator("#revisions li")).to_have_count(1)
            expect(page.locator("#revisions li")).to_contain_text("opened")

            # acknowledge: who and a note (shown as text, never as markup)
            page.fill("#act input[name=by]", "ana")
            page.fill("#act textarea[name=note]", "<b>bearing</b> checked, replacing Monday")
            page.click("#act button[name=acknowledge]")
            expect(page.locator("#actmessage")).to_have_text("Acknowledged (revision 2).")
            expect(page.locator("#revisions li")).to_have_count(2)
            expect(page.locator("#revisions li").nth(1)).to_contain_text(
                "acknowledged by ana: <b>bearing</b> checked, replacing Monday")
            expect(page.locator("#revisions b")).to_have_count(0)
            expect(page.locator("#act button[name=acknowledge]")).to_be_disabled()
            expect(page.locator(f"#alerts tbody tr[data-id='{critical}']")).to_contain_text("acknowledged")
            page.screenshot(path=str(tmp_path / "alerts-page.png"))

            # resolve another one from the page
            high = ids["pump-03", "temp"]
            page.click(f"#alerts tbody tr[data-id='{high}']")
            expect(page.locator("#title")).to_have_text("pump-03 / temp")
            page.click("#act button[name=resolve]")
            expect(page.locator("#actmessage")).to_have_text("Resolved (revision 2).")
            expect(page.locator(f"#alerts tbody tr[data-id='{high}']")).to_contain_text("resolved")
            expect(page.locator("#act button[name=resolve]")).to_be_disabled()
            browser.close()
        assert errors == []
    finally:
        assert host.terminate() == 0

    acked = alert_row(settings, critical)
    assert (acked["acknowledged_by"], acked["note"], acked["status"]) == (
        "ana", "<b>bearing</b> checked, replacing Monday", "open")
    resolved = alert_row(settings, high)
    assert (resolved["resolved_by"], resolved["status"]) == ("ana", "closed")
    shot = tmp_path / "alerts-page.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if target := os.environ.get("FLEETSCORE_PAGE_SCREENSHOT"):
        shutil.copyfile(shot, Path(target))
