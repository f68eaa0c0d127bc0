"""One small blob interface over a local folder, Azurite and Azure Storage.

A key is ``"<container>/<blob name>"``: the first segment is the container (``models``, ``data``,
``predictions``, ``alerts``), the rest is the blob name, ``/``-separated as Azure shows it. Both stores
accept exactly the same keys (Azure's container naming rules; no ``.``/``..``/empty segments, no
backslashes, no absolute paths), so code that works against the folder works against Azure.

ETags are opaque quoted strings that change on every write; ``put(..., if_match=etag)`` is an
optimistic-concurrency write (compare-and-swap) and ``put(..., overwrite=False)`` a create-if-absent,
both raising :class:`BlobConflict` when the condition does not hold, as Azure's 409/412 do.

Prefixes (``list``) are plain string prefixes *within one container*, as Azure's ``prefix=``:
``"data/run1/part-"`` lists ``data/run1/part-00000.parquet``, and ``"data/run1"`` also lists
``data/run10/...`` (end it with ``/`` for a folder). ``download_prefix`` and ``upload_dir`` treat
their prefix as a folder (a trailing ``/`` is implied), so ``download_prefix("data/run1", dest)``
writes ``dest/part-00000.parquet`` and never touches ``data/run10/``.

``open_store(spec)`` picks the store from one setting (``FLEETSCORE_STORAGE``). The Azure SDK is
imported only when an Azure store is opened, so the local default imports none of it.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

__all__ = [
    "AZURITE_ACCOUNT_KEY",
    "AZURITE_ACCOUNT_NAME",
    "AZURITE_BLOB_ENDPOINT",
    "AzureBlobStore",
    "BlobConflict",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "FolderStore",
    "azurite_connection_string",
    "open_store",
    "split_key",
]

AZURITE_ACCOUNT_NAME = "devstoreaccount1"
# The emulator's fixed, publicly documented development key (the same in every Azurite install);
# it is not a secret, but describe() never prints it either.
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_BLOB_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"

TMP_PREFIX = ".tmp-blob-"
"""Temp files of in-flight FolderStore writes start with this; they are never listed."""
LOCK_NAME = ".blobstore.lock"
"""FolderStore's lock file, at the root (outside every container folder)."""

_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_MAX_BLOB_NAME = 1024
_CONTENT_TYPES = {
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
    ".npy": "application/octet-stream",
    ".npz": "application/octet-stream",
}


class BlobNotFound(KeyError):
    """The key names no blob."""


class BlobConflict(Exception):
    """A conditional write failed: the blob exists (overwrite=False) or its ETag is not the one given."""


@dataclass(frozen=True)
class BlobInfo:
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


# --------------------------------------------------------------------------------------------- keys


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


def _split_prefix(prefix: str) -> tuple[str, str]:
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


def _folder_prefix(prefix: str) -> tuple[str, str]:
    """A prefix used as a folder: the container and the blob-name prefix ending in '/' (or '')."""
    container, rest = _split_prefix(prefix)
    if rest and not rest.endswith("/"):
        rest += "/"
    return container, rest


def _check_conditions(overwrite: bool, if_match: str | None) -> None:
    if if_match is not None and (not if_match or if_match.strip() == "*"):
        # If-Match: * is not used: Azure and Azurite disagree on it for a missing blob
        raise ValueError(f"if_match needs the ETag of a version, not {if_match!r}")
    if if_match is not None and not overwrite:
        raise ValueError("overwrite=False (the blob must not exist) contradicts if_match (it must exist)")


def _content_type(key: str) -> str:
    suffix = Path(key).suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


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
    target = dest.joinpath(*relative.split("/"))
    # keys are validated, so this holds; it guards against a hostile listing all the same
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ValueError(f"blob {relative!r} would be written outside {dest}")
    return target


class _StoreBase:
    """What every store derives from the primitive operations."""

    def exists(self, key: str) -> bool:
        return self.info(key) is not None  # type: ignore[attr-defined]

    def upload_dir(self, folder: Path | str, prefix: str) -> list[BlobInfo]:
        """Upload every file below `folder` to ``prefix/<relative path>``; returns their infos, sorted."""
        container, rest = _folder_prefix(prefix)
        files = _relative_files(Path(folder))
        keys = [f"{container}/{rest}{relative}" for relative, _ in files]
        for key in keys:
            split_key(key)  # a file name that is not a valid blob name fails before anything is written
        return self._map(lambda item: self.put_file(item[0], item[1]),  # type: ignore[attr-defined]
                         list(zip(keys, (p for _, p in files), strict=True)))

    def download_prefix(self, prefix: str, dest: Path | str) -> list[Path]:
        """Download every blob below the folder `prefix` into `dest`, keeping the layout below it."""
        container, rest = _folder_prefix(prefix)
        dest = Path(dest)
        base = f"{container}/{rest}"
        infos = self.list(base)  # type: ignore[attr-defined]
        jobs = [(info, _safe_target(dest, info.name[len(base):])) for info in infos]
        return self._map(lambda job: self._download_to(job[0].name, job[1]), jobs)

    def _download_to(self, key: str, target: Path) -> Path:  # pragma: no cover - overridden
        raise NotImplementedError

    def _map(self, fn: Callable[[Any], Any], items: list) -> list:
        return [fn(item) for item in items]


# ------------------------------------------------------------------------------------------- folder


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


class FolderStore(_StoreBase):
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
        container, rest = _split_prefix(key)
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
        _check_conditions(overwrite, if_match)
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise ValueError(f"{key}: a folder store cannot hold a blob below another blob's name") from exc
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            with _file_lock(self.root / LOCK_NAME):
                try:
                    old = os.stat(path)
                except FileNotFoundError:
                    old = None
                if old is not None and not overwrite:
                    raise BlobConflict(f"{key} already exists")
                if if_match is not None and (old is None or _folder_etag(old) != if_match):
                    raise BlobConflict(f"{key}: ETag {if_match} does not match "
                                       f"{'a missing blob' if old is None else _folder_etag(old)}")
                stamp = time.time_ns()
                if old is not None and stamp <= old.st_mtime_ns:
                    stamp = old.st_mtime_ns + 1
                os.utime(tmp, ns=(stamp, stamp))
                st = os.stat(tmp)
                try:
                    os.replace(tmp, path)
                except IsADirectoryError as exc:
                    raise ValueError(f"{key}: a folder store cannot hold a blob named like another "
                                     f"blob's folder") from exc
            return self._info(key, st)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

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
        container, rest = _split_prefix(prefix)
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


# -------------------------------------------------------------------------------------------- azure


def azurite_connection_string(endpoint: str = AZURITE_BLOB_ENDPOINT) -> str:
    """The connection string of Azurite's well-known development account at `endpoint`."""
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT_NAME};AccountKey={AZURITE_ACCOUNT_KEY};"
            f"BlobEndpoint={endpoint.rstrip('/')};")


def _parse_connection_string(conn: str) -> dict[str, str]:
    out = {}
    for part in conn.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


class AzureBlobStore(_StoreBase):
    """Blobs in an Azure Storage account (or Azurite) through azure-storage-blob.

    Give either a connection string (account key or SAS) or an account URL; with an account URL
    and no credential, ``DefaultAzureCredential`` is used (managed identity in Azure, the developer's
    ``az login`` locally); a URL that carries a SAS token needs none. Constructing the store makes
    no network call. Containers are created on first write when missing.
    """

    def __init__(self, *, connection_string: str | None = None, account_url: str | None = None,
                 credential: Any = None, max_workers: int = 8) -> None:
        if (connection_string is None) == (account_url is None):
            raise ValueError("give exactly one of connection_string and account_url")
        from azure.storage.blob import BlobServiceClient  # lazy: the local default never imports the SDK

        self.max_workers = max_workers
        if connection_string is not None:
            settings = _parse_connection_string(connection_string)
            if settings.get("usedevelopmentstorage", "").lower() == "true":
                connection_string = azurite_connection_string()
                settings = _parse_connection_string(connection_string)
            self.auth = "account key" if "accountkey" in settings else (
                "SAS" if "sharedaccesssignature" in settings else "connection string")
            self._service = BlobServiceClient.from_connection_string(connection_string, credential=credential)
        else:
            assert account_url is not None
            has_sas = "sig=" in (urlsplit(account_url).query or "")
            if credential is None and not has_sas:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            self.auth = "SAS" if has_sas and credential is None else type(credential).__name__
            self._service = BlobServiceClient(account_url, credential=credential)
        self.account_name = self._service.account_name
        parts = urlsplit(self._service.url)
        self.endpoint = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")  # no query: a SAS stays out

    def __repr__(self) -> str:
        return f"AzureBlobStore({self.describe()!r})"

    def describe(self) -> str:
        return f"azure blob account {self.account_name} at {self.endpoint} ({self.auth})"

    @property
    def service_client(self) -> Any:
        """The underlying ``BlobServiceClient`` (for what this interface does not cover)."""
        return self._service

    def local_path(self, key: str) -> Path | None:
        return None

    def _blob(self, key: str) -> Any:
        container, name = split_key(key)
        return self._service.get_blob_client(container, name)

    def _map(self, fn: Callable[[Any], Any], items: list) -> list:
        if len(items) <= 1 or self.max_workers <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(items))) as pool:
            return list(pool.map(fn, items))

    # writes

    def put(self, key: str, data: bytes, *, overwrite: bool = True, if_match: str | None = None) -> BlobInfo:
        data = bytes(data)
        return self._upload(key, lambda: data, len(data), overwrite=overwrite, if_match=if_match)

    def put_file(self, key: str, path: Path | str, *, overwrite: bool = True,
                 if_match: str | None = None) -> BlobInfo:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size

            def rewind() -> IO[bytes]:
                fh.seek(0)
                return fh

            return self._upload(key, rewind, size, overwrite=overwrite, if_match=if_match)

    def _upload(self, key: str, data: Callable[[], Any], size: int, *, overwrite: bool,
                if_match: str | None) -> BlobInfo:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        _check_conditions(overwrite, if_match)
        blob = self._blob(key)
        kwargs: dict[str, Any] = {
            "overwrite": overwrite,
            "length": size,
            "content_settings": ContentSettings(content_type=_content_type(key)),
            "max_concurrency": 4,
        }
        if if_match is not None:
            kwargs["etag"] = if_match
            kwargs["match_condition"] = MatchConditions.IfNotModified
        for attempt in range(2):
            try:
                result = blob.upload_blob(data(), **kwargs)
                break
            except ResourceExistsError as exc:
                raise BlobConflict(f"{key} already exists") from exc
            except ResourceModifiedError as exc:
                raise BlobConflict(f"{key}: ETag {if_match} does not match") from exc
            except ResourceNotFoundError as exc:
                code = str(getattr(exc, "error_code", "") or "")
                if attempt == 0 and code == "ContainerNotFound":
                    self._create_container(blob.container_name)
                    continue
                if if_match is not None and code == "BlobNotFound":
                    raise BlobConflict(f"{key}: ETag {if_match} does not match a missing blob") from exc
                raise
        return BlobInfo(name=key, etag=_etag(result["etag"]), size=size, last_modified_ms=_ms(result["last_modified"]))

    def _create_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._service.create_container(container)

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._blob(key).delete_blob(delete_snapshots="include")

    # reads

    def get(self, key: str) -> bytes:
        return self.get_with_info(key)[0]

    def get_with_info(self, key: str) -> tuple[bytes, BlobInfo]:
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        blob = self._blob(key)
        for attempt in range(5):
            try:
                # a download in several ranges pins the first range's ETag (If-Match) on the others,
                # so data and properties are one version; a rewrite mid-download raises, and we retry
                downloader = blob.download_blob(max_concurrency=4)
                data = downloader.readall()
            except ResourceNotFoundError as exc:
                raise BlobNotFound(key) from exc
            except ResourceModifiedError:
                if attempt == 4:
                    raise
                continue
            props = downloader.properties
            return data, BlobInfo(name=key, etag=_etag(props.etag), size=len(data),
                                  last_modified_ms=_ms(props.last_modified))
        raise AssertionError("unreachable")

    def info(self, key: str) -> BlobInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self._blob(key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return BlobInfo(name=key, etag=_etag(props.etag), size=props.size, last_modified_ms=_ms(props.last_modified))

    def list(self, prefix: str) -> list[BlobInfo]:
        from azure.core.exceptions import ResourceNotFoundError

        container, rest = _split_prefix(prefix)
        client = self._service.get_container_client(container)
        try:
            out = [BlobInfo(name=f"{container}/{p.name}", etag=_etag(p.etag), size=p.size,
                            last_modified_ms=_ms(p.last_modified))
                   for p in client.list_blobs(name_starts_with=rest or None)]
        except ResourceNotFoundError:  # the container does not exist yet
            return []
        return sorted(out, key=lambda i: i.name)

    def _download_to(self, key: str, target: Path) -> Path:
        from azure.core.exceptions import ResourceNotFoundError

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{TMP_PREFIX}{target.name}.{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                self._blob(key).download_blob(max_concurrency=4).readinto(fh)
            os.replace(tmp, target)
        except ResourceNotFoundError as exc:
            raise BlobNotFound(key) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return target


def _etag(etag: str) -> str:
    """ETags quoted as in HTTP headers (List Blobs returns them bare, the other calls quoted)."""
    return etag if etag.startswith(('"', "W/")) else f'"{etag}"'


def _ms(dt: Any) -> int:
    return int(dt.timestamp() * 1000) if dt is not None else 0


# --------------------------------------------------------------------------------------------- open


def open_store(spec: str) -> BlobStore:
    """The store a ``FLEETSCORE_STORAGE`` value names.

    - ``UseDevelopmentStorage=true``: Azurite's development account at 127.0.0.1:10000;
    - a connection string (has ``AccountName=`` or ``BlobEndpoint=``): that account (Azurite or Azure);
    - ``https://<account>.blob.core.windows.net[/]``: that account with ``DefaultAzureCredential``
      (or the URL's own SAS token);
    - anything else: a local folder.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("storage setting is empty: give a folder, a connection string or an account URL")
    spec = spec.strip()
    compact = spec.replace(" ", "").lower()
    if "usedevelopmentstorage=true" in compact:
        return AzureBlobStore(connection_string=azurite_connection_string())
    if "accountname=" in compact or "blobendpoint=" in compact:
        return AzureBlobStore(connection_string=spec)
    if compact.startswith(("https://", "http://")):
        return AzureBlobStore(account_url=spec)
    if ";" in spec and "=" in spec:  # a mistyped connection string: never echo it (it may hold a key)
        raise ValueError("storage setting looks like a connection string but has neither AccountName= nor "
                         "BlobEndpoint=; check FLEETSCORE_STORAGE")
    return FolderStore(spec)
