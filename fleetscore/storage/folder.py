"""The folder adapter: blobs as files below a root folder (``root/<container>/<blob name>``), safe for
several processes on one machine. The contract is :mod:`fleetscore.storage.base`."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fleetscore.storage.base import (
    LOCK_NAME,
    TMP_PREFIX,
    BlobConflict,
    BlobInfo,
    BlobNotFound,
    StoreBase,
    check_conditions,
    split_key,
    split_prefix,
)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on `path` (created if missing).

    POSIX: ``fcntl.flock`` on a fresh open file description, so it also serialises threads of one
    process. Windows: ``msvcrt.locking`` on the first byte (best effort: it gives up after ~10 s).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _folder_etag(st: os.stat_result) -> str:
    return f'"0x{st.st_mtime_ns:X}-{st.st_ino:X}-{st.st_size:X}"'


class FolderStore(StoreBase):
    """Blobs as files below `root` (``root/<container>/<blob name>``).

    Writes are atomic: the data goes to a temp file in the target's folder, then ``os.replace``.
    A file is never modified in place, so a reader holding it open sees one whole version.

    Conditional writes (``overwrite=False``, ``if_match``) and deletes take an exclusive lock on
    ``root/.blobstore.lock`` (``fcntl.flock``; ``msvcrt.locking`` on Windows) for the short
    check-and-rename step only, never while the data is written, so they are atomic against every
    other writer that goes through a FolderStore on this root, in any process on this machine.
    (Network file systems may not honour ``flock``; use Azure Storage for several machines.)

    The ETag is built from mtime (ns), inode and size. Each write stamps the new file with an mtime
    strictly greater than the old one's, and the new inode always differs from the replaced file's
    (both exist at the moment of the rename), so the ETag changes on every write.

    ``fsync=True`` also flushes data to disk before the rename (slower; off by default: the atomic
    rename already prevents torn files, a power loss can at worst bring back the previous version).
    """

    def __init__(self, root: Path | str, *, fsync: bool = False) -> None:
        self.root = Path(root).expanduser().resolve()
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"FolderStore({str(self.root)!r})"

    def describe(self) -> str:
        return f"folder {self.root}"

    def _path(self, key: str) -> Path:
        container, name = split_key(key)
        return self.root.joinpath(container, *name.split("/"))

    def local_path(self, key: str) -> Path | None:
        """The file (or folder, for a prefix) a key maps to; it may not exist. Read it, never write it."""
        container, rest = split_prefix(key)
        return self.root.joinpath(container, *[s for s in rest.split("/") if s])

    def _info(self, key: str, st: os.stat_result) -> BlobInfo:
        return BlobInfo(name=key, etag=_folder_etag(st), size=st.st_size, last_modified_ms=st.st_mtime_ns // 1_000_000)

    # writes

    def put(self, key: str, data: bytes, *, overwrite: bool = True, if_match: str | None = None) -> BlobInfo:
        view = memoryview(data)
        return self._write(key, lambda fh: fh.write(view), overwrite=overwrite, if_match=if_match)

    def put_file(self, key: str, path: Path | str, *, overwrite: bool = True,
                 if_match: str | None = None) -> BlobInfo:
        def copy(fh: IO[bytes]) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 1024 * 1024)

        return self._write(key, copy, overwrite=overwrite, if_match=if_match)

    def _write(self, key: str, writer: Callable[[IO[bytes]], Any], *, overwrite: bool,
               if_match: str | None) -> BlobInfo:
        """Write a temp file beside the target with `writer`, then, under the lock, check the conditions
        and rename it over the target."""
        check_conditions(overwrite, if_match)
        path = self._path(key)
        _make_parent(key, path)
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        tmp = Path(tmp_name)
        try:
            self._fill(fd, tmp, writer)
            with _file_lock(self.root / LOCK_NAME):
                old = _current_version(key, path, overwrite=overwrite, if_match=if_match)
                st = _replace_as_newer(key, tmp, path, old)
            return self._info(key, st)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _fill(self, fd: int, tmp: Path, writer: Callable[[IO[bytes]], Any]) -> None:
        """Write the data to the open temp file `fd` (flushed, fsynced if asked), readable by all."""
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if not path.is_file():
            return
        with _file_lock(self.root / LOCK_NAME), contextlib.suppress(FileNotFoundError):
            path.unlink()

    # reads

    def get(self, key: str) -> bytes:
        return self.get_with_info(key)[0]

    def get_with_info(self, key: str) -> tuple[bytes, BlobInfo]:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())  # the open file is one version: writers replace, never modify
                return fh.read(), self._info(key, st)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise BlobNotFound(key) from exc

    def info(self, key: str) -> BlobInfo | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._info(key, st) if stat.S_ISREG(st.st_mode) else None

    def list(self, prefix: str) -> list[BlobInfo]:
        container, rest = split_prefix(prefix)
        full_prefix = f"{container}/{rest}"
        folder, _, _ = rest.rpartition("/")
        start = self.root.joinpath(container, *[s for s in folder.split("/") if s])
        if not start.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            # descend only into folders that can hold a match
            dirnames[:] = [d for d in dirnames if _may_match(f"{rel_dir}/{d}/", full_prefix)]
            for filename in filenames:
                if filename.startswith(TMP_PREFIX):
                    continue
                key = f"{rel_dir}/{filename}"
                if not key.startswith(full_prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, filename))
                except FileNotFoundError:  # deleted while listing
                    continue
                out.append(self._info(key, st))
        return sorted(out, key=lambda i: i.name)

    def _download_to(self, key: str, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(self._path(key), target)
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc
        return target


def _may_match(folder: str, prefix: str) -> bool:
    return folder.startswith(prefix) or prefix.startswith(folder)


def _make_parent(key: str, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ValueError(f"{key}: a folder store cannot hold a blob below another blob's name") from exc


def _current_version(key: str, path: Path, *, overwrite: bool, if_match: str | None) -> os.stat_result | None:
    """The target's current file (None if missing); BlobConflict unless the write's conditions hold.
    Call it under the lock."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    if old is not None and not overwrite:
        raise BlobConflict(f"{key} already exists")
    if if_match is not None and (old is None or _folder_etag(old) != if_match):
        raise BlobConflict(f"{key}: ETag {if_match} does not match "
                           f"{'a missing blob' if old is None else _folder_etag(old)}")
    return old


def _replace_as_newer(key: str, tmp: Path, path: Path, old: os.stat_result | None) -> os.stat_result:
    """Stamp `tmp` with an mtime (ns) above the old file's, then rename it over `path`; its stat.
    Call it under the lock."""
    stamp = time.time_ns()
    if old is not None and stamp <= old.st_mtime_ns:
        stamp = old.st_mtime_ns + 1
    os.utime(tmp, ns=(stamp, stamp))
    st = os.stat(tmp)
    try:
        os.replace(tmp, path)
    except IsADirectoryError as exc:
        raise ValueError(f"{key}: a folder store cannot hold a blob named like another blob's folder") from exc
    return st
