"""The backend contract: where a run's partitions are scored.

The run service hands a backend a :class:`SubmitRequest` (what the timer knows about a run). A backend may
open a :class:`Feed` to score partitions while the run is still exporting them, submits the run, and returns
a :class:`Submission`: the backend's own job id and, for a backend that scored in this process, the
prediction files it wrote and the partitions it could not score. The run service indexes those files (in
Azure the blob trigger does). Paths are ``<container>/<path>`` in the storage the Functions app uses, e.g.
``data/<run_id>``. No backend imports the run service or the index.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

from fleetscore.storage.paths import model_pack_prefix, predictions_prefix, run_data_prefix


@dataclasses.dataclass(frozen=True)
class SubmitRequest:
    """One run to score: its partitions, the model pack to use and where the predictions go."""

    run_id: str
    slot_ms: int
    data_path: str
    model_version: str
    model_pack_path: str
    output_path: str
    partitions: tuple[str, ...] = ()
    """The partition file names under `data_path` (the run manifest's), once the export has written them."""
    model_sha256: str | None = None
    """The SHA-256 of the pack's manifest.json the run pinned: every scoring worker refuses another manifest."""

    @classmethod
    def for_run(cls, run_id: str, slot_ms: int, model_version: str, model_sha256: str | None = None
                ) -> SubmitRequest:
        """The standard layout: ``data/<run_id>``, ``models/<version>``, ``predictions/<run_id>``."""
        return cls(run_id=run_id, slot_ms=slot_ms, data_path=run_data_prefix(run_id), model_version=model_version,
                   model_pack_path=model_pack_prefix(model_version), output_path=predictions_prefix(run_id),
                   model_sha256=model_sha256)


@dataclasses.dataclass
class Submission:
    """What a backend did with a run. `in_process` backends have finished scoring when `submit` returns:
    `written` lists the prediction files (store keys) and `unscored` the partitions that wrote none
    ({file name: error}). Remote backends return only their job id; their files reach the blob trigger."""

    backend_run_id: str
    in_process: bool = False
    written: list[str] = dataclasses.field(default_factory=list)
    unscored: dict[str, str] = dataclasses.field(default_factory=dict)


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


class Feed(Protocol):
    """Partitions handed to a backend as the export writes them (store keys)."""

    def add(self, key: str) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """Scores the partitions of one run. `in_process`: `submit` scores in this process and returns when done
    (the run is then "running" while it waits); otherwise it returns once a remote job is accepted."""

    in_process: bool

    def open_feed(self, req: SubmitRequest) -> Feed | None:
        """Start scoring before the export ends, or None when this backend takes the run whole."""
        ...

    def submit(self, req: SubmitRequest) -> Submission:
        """Submit (or, in process, score) the run's partitions; raises :class:`SubmissionError` when refused."""
        ...

    def cancel(self) -> None:
        """Stop what `open_feed`/`submit` started in this process (a failed run)."""
        ...


@dataclasses.dataclass(frozen=True)
class JobState:
    """A remote job's state as its service reports it: `status` is the service's own word (`Running`,
    `Failed`, ...), `ended` whether it will write nothing more, `failed` whether it ended without finishing
    (failed or cancelled), `message` the service's explanation (may be empty)."""

    status: str
    ended: bool
    failed: bool
    message: str = ""


@runtime_checkable
class JobTracker(Protocol):
    """A backend whose jobs run elsewhere and can be asked for their state (the Azure ML backends)."""

    def job_state(self, backend_run_id: str) -> JobState:
        """The job's state; raises :class:`SubmissionError` (``status`` 404: no such job) when not answered."""
        ...
