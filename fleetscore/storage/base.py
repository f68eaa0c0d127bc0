"""The blob store contract: the `BlobStore` protocol, its errors, `BlobInfo`, and the key rules every
adapter enforces (:mod:`fleetscore.storage.folder`, :mod:`fleetscore.storage.azure`).

A key is ``"<container>/<blob name>"``: the first segment is the container (``models``, ``data``,
``predictions``, ``alerts``), the rest is the blob name, ``/``-separated as Azure shows it. Every store
accepts exactly the same keys (Azure's container naming rules; no ``.``/``..``/empty segments, no
backslashes, no absolute paths), so code that works against the folder works against Azure.

ETags are opaque quoted strings that change on every write; ``put(..., if_match=etag)`` is an
optimistic-concurrency write (compare-and-swap) and ``put(..., overwrite=False)`` a create-if-absent,
both raising :class:`BlobConflict` when the condition does not hold, as Azure's 409/412 do.

Prefixes (``list``) are plain string prefixes *within one container*, as Azure's ``prefix=``:
``"data/run1/part-"`` lists ``data/run1/part-00000.parquet``, and ``"data/run1"`` also lists
``data/run10/...`` (end it with ``/`` for a folder). ``download_prefix`` and ``upload_dir`` treat
their prefix as a folder (a trailing ``/`` is implied), so ``download_prefix("data/run1", dest)``
writes ``dest/part-00000.parquet`` and never touches ``data/run10/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

TMP_PREFIX = ".tmp-blob-"
"""Temp files of in-flight writes and downloads start with this; they are never listed, never a key."""
LOCK_NAME = ".blobstore.lock"
"""FolderStore's lock file, at the root (outside every container folder)."""

_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_MAX_BLOB_NAME = 1024


class BlobNotFound(KeyError):
    """The key names no blob."""


class BlobConflict(Exception):
    """A conditional write failed: the blob exists (overwrite=False) or its ETag is not the one given."""


@dataclass(frozen=True)
class BlobInfo:
    """One blob as a store lists it: key, ETag, size in bytes, last-modified time in epoch ms UTC."""

    name: str
    """The full key, container first."""
    etag: str
    size: int
    last_modified_ms: int

    @property
    def container(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def blob_name(self) -> str:
        return self.name.split("/", 1)[1]


@runtime_checkable
class BlobStore(Protocol):
    """What every store offers; keys and prefixes follow the module's rules, data is bytes."""

    def put(self, key: str, data: bytes, *, overwrite: bool = True, if_match: str | None = None) -> BlobInfo: ...

    def put_file(self, key: str, path: Path | str, *, overwrite: bool = True,
                 if_match: str | None = None) -> BlobInfo: ...

    def get(self, key: str) -> bytes: ...

    def get_with_info(self, key: str) -> tuple[bytes, BlobInfo]: ...

    def info(self, key: str) -> BlobInfo | None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[BlobInfo]: ...

    def delete(self, key: str) -> None: ...

    def download_prefix(self, prefix: str, dest: Path | str) -> list[Path]: ...

    def upload_dir(self, folder: Path | str, prefix: str) -> list[BlobInfo]: ...

    def local_path(self, key: str) -> Path | None: ...

    def describe(self) -> str: ...


def _check_container(container: str, original: str) -> None:
    if not _CONTAINER_RE.match(container):
        raise ValueError(f"invalid blob key {original!r}: container {container!r} must be 3-63 characters of "
                         f"lowercase letters, digits and single hyphens")


def _check_segments(segments: list[str], original: str) -> None:
    for seg in segments:
        if seg == "":
            raise ValueError(f"invalid blob key {original!r}: empty path segment")
        if seg in (".", ".."):
            raise ValueError(f"invalid blob key {original!r}: '.' and '..' segments are not allowed")
        if seg.startswith(TMP_PREFIX) or seg == LOCK_NAME:
            raise ValueError(f"invalid blob key {original!r}: reserved name {seg!r}")


def _check_text(key: Any, what: str = "key") -> str:
    if not isinstance(key, str):
        raise ValueError(f"blob {what} must be a string, not {type(key).__name__}")
    if not key:
        raise ValueError(f"blob {what} must not be empty")
    if "\\" in key:
        raise ValueError(f"invalid blob {what} {key!r}: backslashes are not allowed")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise ValueError(f"invalid blob {what} {key!r}: must be relative, starting with the container")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError(f"invalid blob {what} {key!r}: control characters are not allowed")
    return key


def split_key(key: str) -> tuple[str, str]:
    """``"data/run1/part-00000.parquet"`` → ``("data", "run1/part-00000.parquet")``; ValueError if invalid."""
    _check_text(key)
    container, sep, name = key.partition("/")
    _check_container(container, key)
    if not sep or not name:
        raise ValueError(f"invalid blob key {key!r}: expected '<container>/<blob name>'")
    if len(name) > _MAX_BLOB_NAME:
        raise ValueError(f"invalid blob key {key[:80]!r}...: blob name longer than {_MAX_BLOB_NAME} characters")
    _check_segments(name.split("/"), key)
    return container, name


def split_prefix(prefix: str) -> tuple[str, str]:
    """A list prefix: the container, then a (possibly empty) string prefix of blob names."""
    _check_text(prefix, "prefix")
    container, _, rest = prefix.partition("/")
    _check_container(container, prefix)
    if rest:
        segments = rest.split("/")
        if segments[-1] == "":  # a trailing slash is fine
            segments = segments[:-1]
        _check_segments(segments, prefix)
    return container, rest


def folder_prefix(prefix: str) -> tuple[str, str]:
    """A prefix used as a folder: the container and the blob-name prefix ending in '/' (or '')."""
    container, rest = split_prefix(prefix)
    if rest and not rest.endswith("/"):
        rest += "/"
    return container, rest


def check_conditions(overwrite: bool, if_match: str | None) -> None:
    if if_match is not None and (not if_match or if_match.strip() == "*"):
        # If-Match: * is not used: Azure and Azurite disagree on it for a missing blob
        raise ValueError(f"if_match needs the ETag of a version, not {if_match!r}")
    if if_match is not None and not overwrite:
        raise ValueError("overwrite=False (the blob must not exist) contradicts if_match (it must exist)")


def _relative_files(folder: Path) -> list[tuple[str, Path]]:
    """Every regular file below `folder` as (posix relative path, path), sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    out = []
    for dirpath, _dirnames, filenames in os.walk(folder):
        for filename in filenames:
            path = Path(dirpath) / filename
            if path.is_file():
                out.append((path.relative_to(folder).as_posix(), path))
    return sorted(out)


def _safe_target(dest: Path, relative: str) -> Path:
    """`dest/<relative>`, refused if it would land outside `dest`."""
    target = dest.joinpath(*relative.split("/"))
    # keys are validated, so this holds; it guards against a hostile listing all the same
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ValueError(f"blob {relative!r} would be written outside {dest}")
    return target


class StoreBase:
    """What every store derives from the primitive operations (`info`, `list`, `put_file`, `_download_to`);
    `_map` runs a bulk operation's items, one after another unless a store overrides it."""

    def exists(self, key: str) -> bool:
        return self.info(key) is not None  # type: ignore[attr-defined]

    def upload_dir(self, folder: Path | str, prefix: str) -> list[BlobInfo]:
        """Upload every file below `folder` to ``prefix/<relative path>``; returns their infos, sorted."""
        container, rest = folder_prefix(prefix)
        files = _relative_files(Path(folder))
        keys = [f"{container}/{rest}{relative}" for relative, _ in files]
        for key in keys:
            split_key(key)  # a file name that is not a valid blob name fails before anything is written
        return self._map(lambda item: self.put_file(item[0], item[1]),  # type: ignore[attr-defined]
                         list(zip(keys, (p for _, p in files), strict=True)))

    def download_prefix(self, prefix: str, dest: Path | str) -> list[Path]:
        """Download every blob below the folder `prefix` into `dest`, keeping the layout below it."""
        container, rest = folder_prefix(prefix)
        dest = Path(dest)
        base = f"{container}/{rest}"
        infos = self.list(base)  # type: ignore[attr-defined]
        jobs = [(info, _safe_target(dest, info.name[len(base):])) for info in infos]
        return self._map(lambda job: self._download_to(job[0].name, job[1]), jobs)

    def _download_to(self, key: str, target: Path) -> Path:  # pragma: no cover - overridden
        raise NotImplementedError

    def _map(self, fn: Callable[[Any], Any], items: list) -> list:
        return [fn(item) for item in items]
