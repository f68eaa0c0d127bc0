"""Scoring backends: ``local`` (a process pool on this machine) and the Azure ML REST backends, all
satisfying :class:`fleetscore.backends.base.Backend`; :func:`backend_for` picks one from the settings."""

from __future__ import annotations

from typing import Any

from fleetscore.backends.aml import aml_backend
from fleetscore.backends.base import Backend
from fleetscore.backends.local import LocalBackend, Progress


def backend_for(settings: Any, store: Any, progress: Progress | None = None) -> Backend:
    """The backend `SCORING_BACKEND` names, built from the settings and the blob store."""
    if settings.scoring_backend == "local":
        return LocalBackend(settings, store, progress=progress)
    return aml_backend(settings)
