"""What every command shares: settings-or-exit, the CLI's time parsing and formats."""

from __future__ import annotations

import pytest
import typer

from fleetscore.cli.console import fmt_count, fmt_ms, parse_time, settings_or_exit


def test_a_wrong_setting_exits_2_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("SCORING_SCHEDULE", "not a schedule")
    with pytest.raises(typer.Exit) as exited:
        settings_or_exit()
    assert exited.value.exit_code == 2 and "SCORING_SCHEDULE" in capsys.readouterr().err


def test_cli_times_are_utc_when_naive_and_print_to_the_second():
    assert parse_time(None) is None
    assert parse_time("2026-01-07T20:00") == parse_time("2026-01-07T21:00+01:00") == 1_767_816_000_000
    assert fmt_ms(1_767_816_000_999) == "2026-01-07T20:00:00Z" and fmt_ms(None) == "-"
    with pytest.raises(typer.BadParameter):
        parse_time("yesterday")


def test_counts_have_separators_and_a_dash_when_missing():
    assert fmt_count(1234567) == "1,234,567" and fmt_count(12.0) == "12"
    assert fmt_count(None) == "-" and fmt_count(float("nan")) == "-"
