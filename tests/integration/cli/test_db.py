"""`fleetscore db` on a real SQLite file."""

from __future__ import annotations

from typer.testing import CliRunner

from fleetscore import clock, db
from fleetscore.cli.main import app


def test_watermark_command_moves_forward_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETSCORE_SQL_URL", f"sqlite:///{tmp_path / 'w.db'}")
    monkeypatch.setenv("FLEETSCORE_STORAGE", str(tmp_path / "blobs"))
    runner = CliRunner()
    assert "scoring watermark: -" in runner.invoke(app, ["db", "watermark"]).output
    assert "2026-01-07T20:00:00Z" in runner.invoke(app, ["db", "watermark", "--set", "2026-01-07T20:00Z"]).output
    assert "2026-01-07T20:00:00Z" in runner.invoke(app, ["db", "watermark", "--set", "2026-01-07T10:00Z"]).output
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.connect() as conn:
        assert db.read_watermark(conn) == clock.to_ms("2026-01-07T20:00:00")
    engine.dispose()
