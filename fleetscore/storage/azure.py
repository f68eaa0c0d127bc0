"""The Azure adapter: blobs in an Azure Storage account or Azurite, through azure-storage-blob.
The contract is :mod:`fleetscore.storage.base`.

The Azure SDK is imported only when an Azure store is made or used (each import below says so), so a
process on the local folder store never loads it.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from fleetscore.clock import to_ms
from fleetscore.storage.base import (
    TMP_PREFIX,
    BlobConflict,
    BlobInfo,
    BlobNotFound,
    StoreBase,
    check_conditions,
    split_key,
    split_prefix,
)

AZURITE_ACCOUNT_NAME = "devstoreaccount1"
# The emulator's fixed, publicly documented development key (the same in every Azurite install);
# it is not a secret, but describe() never prints it either.
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_BLOB_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"
_CONTENT_TYPES = {
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
    ".npy": "application/octet-stream",
    ".npz": "application/octet-stream",
}


def _content_type(key: str) -> str:
    suffix = Path(key).suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


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


class AzureBlobStore(StoreBase):
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
        # lazy: the Azure SDK loads only with an Azure store
        from azure.storage.blob import BlobServiceClient

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
                from azure.identity import DefaultAzureCredential  # lazy: heavy, only for an account URL

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
        # lazy: the Azure SDK loads only with an Azure store
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        check_conditions(overwrite, if_match)
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
        return _blob_info(key, result["etag"], size, result["last_modified"])

    def _create_container(self, container: str) -> None:
        # lazy: the Azure SDK loads only with an Azure store
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._service.create_container(container)

    def delete(self, key: str) -> None:
        # lazy: the Azure SDK loads only with an Azure store
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._blob(key).delete_blob(delete_snapshots="include")

    # reads

    def get(self, key: str) -> bytes:
        return self.get_with_info(key)[0]

    def get_with_info(self, key: str) -> tuple[bytes, BlobInfo]:
        # lazy: the Azure SDK loads only with an Azure store
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
            return data, _blob_info(key, props.etag, len(data), props.last_modified)
        raise AssertionError("unreachable")

    def info(self, key: str) -> BlobInfo | None:
        # lazy: the Azure SDK loads only with an Azure store
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self._blob(key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return _blob_info(key, props.etag, props.size, props.last_modified)

    def list(self, prefix: str) -> list[BlobInfo]:
        # lazy: the Azure SDK loads only with an Azure store
        from azure.core.exceptions import ResourceNotFoundError

        container, rest = split_prefix(prefix)
        client = self._service.get_container_client(container)
        try:
            out = [_blob_info(f"{container}/{p.name}", p.etag, p.size, p.last_modified)
                   for p in client.list_blobs(name_starts_with=rest or None)]
        except ResourceNotFoundError:  # the container does not exist yet
            return []
        return sorted(out, key=lambda i: i.name)

    def _download_to(self, key: str, target: Path) -> Path:
        # lazy: the Azure SDK loads only with an Azure store
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


def _blob_info(key: str, etag: str, size: int, last_modified: Any) -> BlobInfo:
    """A BlobInfo from what the SDK gives: the ETag quoted as in HTTP headers (List Blobs returns it bare,
    the other calls quoted), the last-modified datetime as epoch ms (0 if none)."""
    quoted = etag if etag.startswith(('"', "W/")) else f'"{etag}"'
    return BlobInfo(name=key, etag=quoted, size=size, last_modified_ms=to_ms(last_modified) if last_modified else 0)
