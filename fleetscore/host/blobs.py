"""Blob triggers: each blob function fires for every blob under its path, once per blob version (name + ETag).

The store (FLEETSCORE_STORAGE) is listed every `poll_seconds`, the local stand-in for Event Grid, so a blob
written while the host was down fires at the next start too; names with a segment starting with `.`
(writers' temp files) are not blobs to fire for. Outcomes are kept as receipts
(:mod:`fleetscore.host.receipts`); a version failing host.json `poisonBlobThreshold` times is recorded as
poison, logged, and never fired again.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from azure.functions.blob import InputStream

from fleetscore.clock import iso_offset
from fleetscore.host.bindings import HostFunction
from fleetscore.host.invocation import Invoker
from fleetscore.host.receipts import DONE, FAILED, POISON, BlobReceipts
from fleetscore.storage.base import BlobInfo, BlobNotFound, BlobStore

log = logging.getLogger("fleetscore.host")


def is_hidden(key: str) -> bool:
    """Does a segment of the blob name after the container start with `.` (a writer's temp file)?"""
    return any(seg.startswith(".") for seg in key.split("/")[1:])


def input_stream(data: bytes, info: BlobInfo, local: Path | None) -> InputStream:
    """The `InputStream` a blob function receives, with the blob's properties (and a file URI if local)."""
    props = {"ETag": info.etag, "Length": info.size, "ContentLength": info.size,
             "LastModified": iso_offset(info.last_modified_ms)}
    return InputStream(data=data, name=info.name, length=info.size,
                       uri=local.resolve().as_uri() if local is not None else None, blob_properties=props,
                       metadata={})


class BlobTriggers:
    """The blob functions of a host: their receipts (`receipts[function]`) and the polling loop."""

    def __init__(self, functions: list[HostFunction], invoker: Invoker, stop: threading.Event, *,
                 poison_threshold: int, poll_seconds: float) -> None:
        self.functions = functions
        self.invoker = invoker
        self.poison_threshold = poison_threshold
        self.poll_seconds = poll_seconds
        self._stop = stop
        self.receipts: dict[str, BlobReceipts] = {}
        self.store: BlobStore | None = None

    def open(self, store: BlobStore, folder: Path, *, fsync: bool) -> None:
        """Watch `store`; keep each function's receipts in `<folder>/<function>.jsonl`."""
        self.store = store
        for fn in self.functions:
            self.receipts[fn.name] = BlobReceipts(folder, fn.name, fsync=fsync)

    def close(self) -> None:
        for receipts in self.receipts.values():
            receipts.close()

    def poll(self) -> None:
        """List every function's path each `poll_seconds` and fire for new versions until the host stops."""
        while not self._stop.is_set():
            for fn in self.functions:
                if self._stop.is_set():
                    break
                try:
                    self.scan(fn)
                except Exception:
                    log.exception("Functions.%s: listing %s failed; retrying at the next poll", fn.name,
                                  fn.list_prefix)
            self._stop.wait(self.poll_seconds)

    def scan(self, fn: HostFunction) -> int:
        """Fire `fn` for each blob version under its path without a final receipt; returns the count fired."""
        assert self.store is not None
        receipts = self.receipts[fn.name]
        fired = 0
        for info in sorted(self.store.list(fn.list_prefix), key=lambda i: i.name):
            if self._stop.is_set():
                break
            if is_hidden(info.name) or not fn.matches(info.name):
                continue
            receipt = receipts.get(info.name, info.etag)
            if receipt is not None and receipt.final:
                continue
            fired += self._fire(fn, info.name)
        return fired

    def _fire(self, fn: HostFunction, key: str) -> int:
        """Invoke `fn` for the current version of blob `key` and record the outcome; 1 if fired, else 0."""
        assert self.store is not None
        receipts = self.receipts[fn.name]
        try:
            data, info = self.store.get_with_info(key)
        except BlobNotFound:
            return 0  # deleted since the listing
        receipt = receipts.get(info.name, info.etag)
        if receipt is not None and receipt.final:
            return 0
        local = self.store.local_path(info.name)
        attempts = (receipt.attempts if receipt is not None else 0) + 1
        error = self.invoker.invoke(fn, lambda: {fn.arg_name: input_stream(data, info, local)},
                                    reason=f"New blob detected: {info.name} (ETag {info.etag})", retry=attempts - 1)
        self._record(fn, info, attempts, error)
        return 1

    def _record(self, fn: HostFunction, info: BlobInfo, attempts: int, error: str | None) -> None:
        """Keep the outcome of attempt number `attempts`: done, failed, or poison at the threshold."""
        receipts = self.receipts[fn.name]
        if error is None:
            receipts.record(info.name, info.etag, DONE, attempts=attempts)
        elif attempts >= self.poison_threshold:
            receipts.record(info.name, info.etag, POISON, attempts=attempts, error=error)
            log.error("Functions.%s: blob %s (ETag %s) failed %d time(s); poisoned (poisonBlobThreshold %d), it "
                      "will not fire again", fn.name, info.name, info.etag, attempts, self.poison_threshold)
        else:
            receipts.record(info.name, info.etag, FAILED, attempts=attempts, error=error)

    def health(self, fn: HostFunction) -> dict[str, Any]:
        """`fn`'s part of `/health`: path and receipt counts."""
        doc: dict[str, Any] = {"path": fn.path}
        receipts = self.receipts.get(fn.name)
        if receipts is not None:
            doc["receipts"] = receipts.counts()
        return doc
