"""Scoring backends: where a run's partitions are scored.

A backend takes a :class:`SubmitRequest` (what the timer knows about a run) and returns the backend's own
id for the job it started. ``local`` runs the entry script in a process pool; ``aml-pipeline`` and
``aml-batch-endpoint`` (:mod:`fleetscore.backends.aml`) start an Azure ML job over REST. Paths are
``<container>/<path>`` in the storage the Functions app uses, e.g. ``data/<run_id>``.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class SubmitRequest:
    """One run to score: its partitions, the model pack to use and where the predictions go."""

    run_id: str
    slot_ms: int
    data_path: str
    model_version: str
    model_pack_path: str
    output_path: str

    @classmethod
    def for_run(cls, run_id: str, slot_ms: int, model_version: str) -> SubmitRequest:
        """The standard layout: ``data/<run_id>``, ``models/<version>``, ``predictions/<run_id>``."""
        return cls(run_id=run_id, slot_ms=slot_ms, data_path=f"data/{run_id}", model_version=model_version,
                   model_pack_path=f"models/{model_version}", output_path=f"predictions/{run_id}")


class SubmissionError(Exception):
    """A backend refused or never accepted a job. ``status`` is the HTTP status (None when no response came),
    ``text`` the response text (or the transport error); neither ever holds the bearer token."""

    def __init__(self, message: str, *, status: int | None = None, text: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.text = text

    def __str__(self) -> str:
        base = super().__str__()
        detail = f"HTTP {self.status}" if self.status is not None else "no response"
        return f"{base} ({detail}): {self.text[:500]}" if self.text else f"{base} ({detail})"


@runtime_checkable
class Backend(Protocol):
    """Starts the scoring job of one run; returns the backend's run/job id."""

    def submit(self, req: SubmitRequest) -> str: ...


def backend_for(services, progress=None) -> Backend:
    """The backend `SCORING_BACKEND` names, built from the services' settings and store."""
    name = services.settings.scoring_backend
    if name == "local":
        from fleetscore.backends.local import LocalBackend

        return LocalBackend(services, progress=progress)
    from fleetscore.backends.aml import aml_backend

    return aml_backend(services.settings)
