"""Settings: each algorithm's default features, MODEL_FEATURES overriding them, and ANNOUNCE_SENSORS."""

from __future__ import annotations

import pytest

from fleetscore.settings import SettingsError, load_settings
from scoring_job import change
from scoring_job.features import DEFAULT_MODEL_FEATURES


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in ("MODEL_ALGORITHM", "MODEL_FEATURES", "ANNOUNCE_SENSORS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no local.settings.json


def test_features_follow_the_algorithm_unless_set(monkeypatch):
    s = load_settings()
    assert s.model_algorithm == "change-z" and s.features == change.FEATURES
    assert s.features_for("ocsvm-rbf") == DEFAULT_MODEL_FEATURES
    monkeypatch.setenv("MODEL_ALGORITHM", "ocsvm-rbf")
    assert load_settings().features == DEFAULT_MODEL_FEATURES
    monkeypatch.setenv("MODEL_FEATURES", " mean , std ")
    assert load_settings().features == ("mean", "std")
    monkeypatch.setenv("MODEL_FEATURES", "")  # as local.settings.sample.json leaves it: the algorithm's default
    assert load_settings().features == DEFAULT_MODEL_FEATURES
    monkeypatch.setenv("MODEL_FEATURES", "mean,bogus")
    with pytest.raises(SettingsError, match="MODEL_FEATURES"):
        load_settings()


def test_announce_sensors_default_to_setpoint_and_can_be_none(monkeypatch):
    assert load_settings().announce == ("setpoint",)
    monkeypatch.setenv("ANNOUNCE_SENSORS", "setpoint, mode ")
    assert load_settings().announce == ("setpoint", "mode")
    monkeypatch.setenv("ANNOUNCE_SENSORS", "")
    assert load_settings().announce == ()
