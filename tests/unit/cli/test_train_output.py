"""What `fleetscore train` prints about the new pack."""

from __future__ import annotations

from fleetscore.cli import train as train_cli
from fleetscore.cli.console import console
from fleetscore.training import TrainResult


def _printed(result: TrainResult, window_minutes: int = 5) -> str:
    with console.capture() as out:
        train_cli._print_result(result, window_minutes)
    return " ".join(out.get().split())


def test_sparse_models_are_counted_with_an_example_and_what_to_set():
    result = TrainResult(version="v1", models=3, skipped={}, windows=900, activated=True,
                         sparse={("d-0001", "flow"): 0.33, ("d-0002", "flow"): 0.31})
    text = _printed(result, 5)
    assert "2 model(s) trained on windows in less than 50% of their range (e.g. d-0001/flow: 33%)" in text
    assert "WINDOW_MINUTES (now 5)" in text


def test_nothing_is_said_of_coverage_when_no_model_is_sparse():
    text = _printed(TrainResult(version="v1", models=3, skipped={}, windows=900, activated=True))
    assert "model pack v1: 3 models from 900 windows, active" in text
    assert "WINDOW_MINUTES" not in text
