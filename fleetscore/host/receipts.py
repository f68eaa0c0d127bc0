"""Blob receipts: which blob versions a blob-trigger function has handled (the local `blobreceipts`).

The Functions host keeps a receipt per function and blob version under
`azure-webjobs-hosts/blobreceipts/<host id>/<function>/<etag>/<container>/<blob>`, so a restart does not fire
again for a version it handled. Here each function has one JSON-lines file, `<folder>/<function>.jsonl`,
appended and fsynced after each outcome; the newest line of a (blob, ETag) wins:

`{"blob": "predictions/r/part-00000.parquet", "etag": "\\"…\\"", "status": "done" | "failed" | "poison",
"attempts": n, "at": ms, "error": "…"}`

`done` and `poison` are final: that version is never fired again. `failed` counts the attempts so far, so
the poison threshold holds across restarts. A torn last line (a crash during the append) is ignored, and
the file is rewritten compactly (one line per version) when opened.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from fleetscore.clock import now_ms

DONE, FAILED, POISON = "done", "failed", "poison"
FINAL = (DONE, POISON)


@dataclass(frozen=True)
class Receipt:
    blob: str
    etag: str
    status: str
    attempts: int
    at: int
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


class BlobReceipts:
    """The receipts of one blob-trigger function. Thread-safe."""

    def __init__(self, folder: Path | str, function: str, *, fsync: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{function}.jsonl"
        self.fsync = fsync
        self._lock = threading.Lock()
        self._receipts: dict[tuple[str, str], Receipt] = {}
        if self.path.is_file():
            for line in self.path.read_bytes().splitlines():
                try:
                    doc = json.loads(line)
                    receipt = Receipt(**doc)
                except (ValueError, TypeError):
                    continue  # a torn line from a crash mid-append
                self._receipts[(receipt.blob, receipt.etag)] = receipt
            self._compact()
        self._fh = open(self.path, "ab")  # noqa: SIM115 - the append handle, closed by close()

    def _compact(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as fh:
            for receipt in self._receipts.values():
                fh.write(json.dumps(asdict(receipt)).encode() + b"\n")
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def get(self, blob: str, etag: str) -> Receipt | None:
        with self._lock:
            return self._receipts.get((blob, etag))

    def record(self, blob: str, etag: str, status: str, *, attempts: int, error: str | None = None) -> Receipt:
        """Persist the outcome for one blob version (append + fsync) before returning it."""
        if status not in (DONE, FAILED, POISON):
            raise ValueError(f"unknown receipt status {status!r}")
        receipt = Receipt(blob, etag, status, attempts, now_ms(), (error or None) and error[:2000])
        line = json.dumps(asdict(receipt)).encode() + b"\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
            self._receipts[(blob, etag)] = receipt
        return receipt

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {DONE: 0, FAILED: 0, POISON: 0}
            for receipt in self._receipts.values():
                out[receipt.status] += 1
            return out

    def poisoned(self) -> list[Receipt]:
        with self._lock:
            return [r for r in self._receipts.values() if r.status == POISON]

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                if self.fsync:
                    os.fsync(self._fh.fileno())
                self._fh.close()

