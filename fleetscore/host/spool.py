"""A durable local event log: the local host's stand-in for one Event Hubs partition.

`POST /events` appends the request body as one event and answers only after the record is written and
fsynced, so an acknowledged event survives a crash. Each Event Hub function is a consumer with its own
checkpoint (the last sequence number it finished); a consumer reads the records after its checkpoint in
order and checkpoints only after its invocation returned, so a crash redelivers the batch (at-least-once).

On disk (`<folder>/`):

- `segment-<first seq:020d>-<byte base:020d>.log`: records, appended; a new segment starts when the current
  one passes `segment_bytes`; a segment every consumer has checkpointed past is deleted.
  A record is a header line `<seq> <enqueued ms> <length> <crc32 hex>\\n`, the body bytes, then `\\n`.
  Sequence numbers start at 1 and have no gaps. The record's offset (as Event Hubs' `offset`) is its byte
  position in the whole log: segment base + position in the segment.
- `checkpoint-<consumer>.json`: `{"sequence_number": n, "updated_at": ms}`, replaced atomically. A consumer
  without one (a new function) starts at the oldest record kept, like host.json `initialOffsetOptions` fromStart.

At open, a torn record at the end of the newest segment (a crash during an append, never acknowledged)
is cut off.
"""

from __future__ import annotations

import json
import os
import re
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fleetscore.clock import now_ms

SEGMENT_RE = re.compile(r"^segment-(\d{20})-(\d{20})\.log$")
MAX_HEADER = 128


class SpoolCorrupt(RuntimeError):
    """A record before the end of the log does not read back."""


@dataclass(frozen=True)
class SpoolRecord:
    sequence_number: int
    offset: int
    enqueued_ms: int
    body: bytes


@dataclass
class _Segment:
    first_seq: int
    base: int
    path: Path
    size: int = 0
    last_seq: int = 0
    """The newest sequence number in the segment (first_seq − 1 when empty)."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, doc: dict, *, fsync: bool = True) -> None:
    """Replace `path` with `doc` so a reader sees the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def _read_record(fh: BinaryIO, expect_seq: int | None) -> tuple[SpoolRecord | None, int]:
    """The record at the handle's position and its size in bytes; (None, 0) when none or torn."""
    start = fh.tell()
    header = fh.readline(MAX_HEADER)
    if not header.endswith(b"\n"):
        return None, 0
    try:
        seq_text, enq_text, len_text, crc_text = header.split()
        seq, enqueued, length, crc = int(seq_text), int(enq_text), int(len_text), int(crc_text, 16)
    except ValueError:
        return None, 0
    if length < 0 or (expect_seq is not None and seq != expect_seq):
        return None, 0
    body = fh.read(length)
    if len(body) != length or fh.read(1) != b"\n" or zlib.crc32(body) != crc:
        return None, 0
    return SpoolRecord(seq, start, enqueued, body), len(header) + length + 1


class Spool:
    """Append-only, fsynced, segmented event log with per-consumer checkpoints. Thread-safe."""

    def __init__(self, folder: Path | str, consumers: tuple[str, ...] | list[str] = ("default",), *,
                 segment_bytes: int = 64 * 1024 * 1024, fsync: bool = True) -> None:
        if not consumers:
            raise ValueError("a spool needs at least one consumer")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.consumers = tuple(consumers)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        stored = {c: self._load_checkpoint(c) for c in self.consumers}
        self._checkpoints = {c: cp for c, cp in stored.items() if cp is not None}
        self._segments = self._recover()
        for consumer, cp in stored.items():  # a new consumer starts at the oldest record kept
            if cp is None:
                self._checkpoints[consumer] = self._segments[0].first_seq - 1
        self._writer: BinaryIO = open(self._segments[-1].path, "ab")  # noqa: SIM115 - closed by close()
        self._closed = False
        self._hints: dict[Path, tuple[int, int]] = {}
        """Per segment: (next sequence number, its byte position) where the last read stopped."""

    # ------------------------------------------------------------------------------------------ state
    def _checkpoint_path(self, consumer: str) -> Path:
        return self.folder / f"checkpoint-{consumer}.json"

    def _load_checkpoint(self, consumer: str) -> int | None:
        path = self._checkpoint_path(consumer)
        if not path.is_file():
            return None
        return int(json.loads(path.read_text(encoding="utf-8"))["sequence_number"])

    def _recover(self) -> list[_Segment]:
        segments = []
        for path in sorted(self.folder.iterdir()):
            m = SEGMENT_RE.match(path.name)
            if m:
                segments.append(_Segment(int(m.group(1)), int(m.group(2)), path))
        if not segments:
            first = max(self._checkpoints.values(), default=0) + 1
            seg = _Segment(first, 0, self.folder / f"segment-{first:020d}-{0:020d}.log", last_seq=first - 1)
            seg.path.touch()
            _fsync_dir(self.folder)
            return [seg]
        for older, newer in zip(segments, segments[1:], strict=False):
            older.size = older.path.stat().st_size
            older.last_seq = newer.first_seq - 1
        last = segments[-1]
        expect, good_end = last.first_seq, 0
        with open(last.path, "rb") as fh:
            while True:
                record, size = _read_record(fh, expect)
                if record is None:
                    break
                good_end += size
                expect += 1
        if good_end != last.path.stat().st_size:  # a torn append: it was never acknowledged
            with open(last.path, "r+b") as fh:
                fh.truncate(good_end)
                os.fsync(fh.fileno())
        last.size, last.last_seq = good_end, expect - 1
        if last.last_seq < max(self._checkpoints.values(), default=0):
            raise SpoolCorrupt(f"{self.folder}: the log ends at {last.last_seq}, before a checkpoint")
        return segments

    @property
    def last_sequence_number(self) -> int:
        with self._lock:
            return self._segments[-1].last_seq

    def checkpointed(self, consumer: str) -> int:
        with self._lock:
            return self._checkpoints[consumer]

    def backlog(self, consumer: str) -> int:
        with self._lock:
            return self._segments[-1].last_seq - self._checkpoints[consumer]

    def stats(self) -> dict:
        with self._lock:
            last = self._segments[-1].last_seq
            return {"last_sequence_number": last, "checkpoints": dict(self._checkpoints),
                    "backlog": {c: last - cp for c, cp in self._checkpoints.items()},
                    "segments": len(self._segments), "bytes": sum(s.size for s in self._segments)}

    # ----------------------------------------------------------------------------------------- append
    def append(self, body: bytes, enqueued_ms: int | None = None) -> SpoolRecord:
        """Write one event durably (write + fsync) and return its record; only then may it be acknowledged."""
        body = bytes(body)
        enqueued = now_ms() if enqueued_ms is None else int(enqueued_ms)
        with self._lock:
            if self._closed:
                raise RuntimeError("the spool is closed")
            seg = self._segments[-1]
            if seg.size >= self.segment_bytes and seg.last_seq >= seg.first_seq:
                seg = self._rotate()
            seq = seg.last_seq + 1
            header = b"%d %d %d %08x\n" % (seq, enqueued, len(body), zlib.crc32(body))
            data = header + body + b"\n"
            try:
                self._writer.write(data)
                self._writer.flush()
                if self.fsync:
                    os.fsync(self._writer.fileno())
            except BaseException:
                # leave no partial record behind for the next append to follow
                self._writer.close()
                with open(seg.path, "r+b") as fh:
                    fh.truncate(seg.size)
                self._writer = open(seg.path, "ab")  # noqa: SIM115 - closed by close()
                raise
            record = SpoolRecord(seq, seg.base + seg.size, enqueued, body)
            seg.size += len(data)
            seg.last_seq = seq
            self._appended.notify_all()
            return record

    def _rotate(self) -> _Segment:
        old = self._segments[-1]
        first, base = old.last_seq + 1, old.base + old.size
        seg = _Segment(first, base, self.folder / f"segment-{first:020d}-{base:020d}.log", last_seq=first - 1)
        self._writer.close()
        self._writer = open(seg.path, "ab")  # noqa: SIM115 - closed by close()
        if self.fsync:
            _fsync_dir(self.folder)
        self._segments.append(seg)
        return seg

    # ------------------------------------------------------------------------------------------- read
    def read(self, after: int, limit: int) -> list[SpoolRecord]:
        """Up to `limit` records with sequence number > `after`, oldest first (only acknowledged ones)."""
        with self._lock:
            segments = [(s.first_seq, s.base, s.path, s.size, s.last_seq) for s in self._segments]
        out: list[SpoolRecord] = []
        want = after + 1
        for first, _base, path, size, last in segments:
            if last < want or len(out) >= limit:
                continue
            if want < first:
                raise SpoolCorrupt(f"{self.folder}: record {want} was deleted (segment starts at {first})")
            out.extend(self._read_segment(path, first, size, want, limit - len(out), _base))
            want = out[-1].sequence_number + 1 if out else want
        return out

    def _read_segment(self, path: Path, first: int, size: int, want: int, limit: int, base: int) -> list[SpoolRecord]:
        out = []
        seq, pos = first, 0
        hint = self._hints.get(path)
        if hint is not None and first <= hint[0] <= want:
            seq, pos = hint  # where the last read of this segment stopped: no rescan from its start
        with open(path, "rb") as fh:
            fh.seek(pos)
            while fh.tell() < size and len(out) < limit:
                record, _ = _read_record(fh, seq)
                if record is None:
                    raise SpoolCorrupt(f"{path}: record {seq} does not read back")
                if seq >= want:
                    out.append(SpoolRecord(seq, base + record.offset, record.enqueued_ms, record.body))
                seq += 1
            self._hints[path] = (seq, fh.tell())
        return out

    def wait(self, after: int, timeout: float) -> bool:
        """Block until a record newer than `after` exists (True) or `timeout` seconds pass (False)."""
        with self._appended:
            return self._appended.wait_for(lambda: self._segments[-1].last_seq > after or self._closed, timeout)

    # ------------------------------------------------------------------------------------- checkpoint
    def checkpoint(self, consumer: str, sequence_number: int) -> None:
        """Record that `consumer` finished every record up to `sequence_number`; drop fully consumed segments."""
        with self._lock:
            if sequence_number > self._segments[-1].last_seq:
                raise ValueError(f"checkpoint {sequence_number} is past the end of the log")
            if sequence_number <= self._checkpoints[consumer]:
                return
            write_json_atomic(self._checkpoint_path(consumer),
                              {"sequence_number": sequence_number, "updated_at": now_ms()},
                              fsync=self.fsync)
            self._checkpoints[consumer] = sequence_number
            done = min(self._checkpoints.values())
            while len(self._segments) > 1 and self._segments[0].last_seq <= done:
                gone = self._segments.pop(0).path
                gone.unlink(missing_ok=True)
                self._hints.pop(gone, None)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.flush()
            if self.fsync:
                os.fsync(self._writer.fileno())
            self._writer.close()
            self._appended.notify_all()
