"""The model pack is checked where a run starts, and pinned: a tampered file, a key outside the id rules or any
edit of the active pack's manifest fails the run with the pack's own error in `runs.error` (issue 14, 3 and 4)."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from fleetscore import db
from fleetscore.context import set_services
from fleetscore.runs.claims import list_runs
from fleetscore.runs.service import start_run
from fleetscore.training import activate_pack, read_active_pack
from scoring_job.pack import MANIFEST, PackError
from tests.helpers.fleet import trained_fleet

W = 300_000
HOUR = 3_600_000


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """A small simulated fleet in SQLite (4 devices), trained with `--activate` (the pack pinned); the slot to run."""
    services, sim, result = trained_fleet(tmp_path, monkeypatch, devices=4)
    yield services, sim.clean_until_ms + 3 * HOUR + 5 * 60_000, result.version
    set_services(None)


def _pack(services, version: str):
    return services.store.local_path(f"models/{version}")


def _run_row(services) -> dict:
    return list_runs(services.engine).iloc[0].to_dict()


def _cli_runs() -> str:
    from fleetscore.cli.main import app

    result = CliRunner().invoke(app, ["runs"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


def test_activation_pins_the_manifest_and_a_run_records_it(fleet):
    services, slot, version = fleet
    digest = hashlib.sha256((_pack(services, version) / MANIFEST).read_bytes()).hexdigest()
    assert json.loads(services.store.get("models/CURRENT")) == {"version": version, "manifest_sha256": digest}
    outcome = start_run(services, slot, trigger="test")
    assert outcome.status == "succeeded", outcome.error
    run = _run_row(services)
    assert (run["model_version"], run["model_sha256"]) == (version, digest)


def test_a_tampered_array_file_fails_the_run_with_the_pack_error(fleet):
    services, slot, version = fleet
    shard = _pack(services, version) / "svm-000.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed
    shard.write_bytes(bytes(data))
    outcome = start_run(services, slot, trigger="test")
    assert outcome.status == "failed"
    expected = "PackError: svm-000.npz: SHA-256 or size mismatch"
    assert outcome.error.startswith(expected), outcome.error  # not BrokenProcessPool
    run = _run_row(services)
    assert run["status"] == "failed" and run["error"].startswith(expected)
    assert expected in _cli_runs()


def test_any_edit_of_the_active_manifest_is_refused(fleet):
    services, slot, version = fleet
    path = _pack(services, version) / MANIFEST
    manifest = json.loads(path.read_bytes())
    manifest["window_minutes"] = 5  # the same value: only the bytes differ
    path.write_text(json.dumps(manifest, indent=1))
    outcome = start_run(services, slot, trigger="test")
    assert outcome.status == "failed"
    assert outcome.error.startswith("PackError: manifest.json: SHA-256 ")
    assert "pinned when the pack was activated" in _run_row(services)["error"]


def _hostile_key(services, version: str) -> None:
    """Rename the pack's first model to ../../x (still sorted first), as an edit of manifest.json would."""
    path = _pack(services, version) / MANIFEST
    manifest = json.loads(path.read_bytes())
    manifest["models"]["device"][0] = "../../x"
    path.write_bytes(json.dumps(manifest, separators=(",", ":")).encode())


def test_a_key_outside_the_id_rules_is_refused_at_activation_and_where_the_run_starts(fleet):
    services, slot, version = fleet
    _hostile_key(services, version)
    with pytest.raises(PackError, match=r"models.device '\.\./\.\./x' is not a device/sensor id"):
        activate_pack(services.store, version)
    services.store.put("models/CURRENT", version.encode())  # the one-line pointer of an older deployment
    assert read_active_pack(services.store).manifest_sha256 is None
    outcome = start_run(services, slot, trigger="test")
    assert outcome.status == "failed"
    assert outcome.error.startswith("PackError: manifest.json: models.device '../../x' is not a device/sensor id")
    with services.engine.connect() as conn:
        assert conn.execute(db.prediction_files.select()).first() is None  # nothing was scored


def test_a_one_line_pointer_still_runs_pinned_to_the_manifest_it_read(fleet):
    services, slot, version = fleet
    services.store.put("models/CURRENT", f"{version}\n".encode())
    digest = hashlib.sha256((_pack(services, version) / MANIFEST).read_bytes()).hexdigest()
    outcome = start_run(services, slot, trigger="test")
    assert outcome.status == "succeeded", outcome.error
    assert _run_row(services)["model_sha256"] == digest
