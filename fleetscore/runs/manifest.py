"""The run manifest: the one typed record of what a run exported (`data/<run_id>/manifest.json`).

Written by the export when every partition is in the store; read by the index to know when a run's last
partition has its prediction file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from fleetscore.storage.base import BlobNotFound, BlobStore
from fleetscore.storage.paths import run_manifest_key

log = logging.getLogger(__name__)


@dataclass
class Partition:
    name: str
    pairs: int
    windows: int


@dataclass
class RunManifest:
    run_id: str
    slot: int
    window_from: int
    window_until: int
    model_version: str
    window_minutes: int
    partitions: list[Partition] = field(default_factory=list)
    created_at: int = 0

    def to_json(self) -> bytes:
        doc = {**self.__dict__, "partitions": [p.__dict__ for p in self.partitions]}
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RunManifest:
        doc = json.loads(data)
        return cls(**{**doc, "partitions": [Partition(**p) for p in doc["partitions"]]})

    @property
    def pairs(self) -> int:
        return sum(p.pairs for p in self.partitions)

    @property
    def windows(self) -> int:
        return sum(p.windows for p in self.partitions)


def read_manifest(store: BlobStore, run_id: str) -> RunManifest | None:
    """The run's manifest, or None when it is missing or unreadable (logged: the run cannot complete from it)."""
    try:
        return RunManifest.from_json(store.get(run_manifest_key(run_id)))
    except BlobNotFound:
        return None
    except Exception as exc:
        log.warning("run %s: manifest not readable (%s: %s); its completion is left to its other files",
                    run_id, type(exc).__name__, exc)
        return None
