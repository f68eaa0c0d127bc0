"""Blob storage: the store contract (:mod:`.base`), its adapters (:mod:`.folder`: a local folder;
:mod:`.azure`: Azure Storage or Azurite), the one module of container keys (:mod:`.paths`), and
:func:`open_store`, which picks the adapter from one setting (``FLEETSCORE_STORAGE``)."""

from __future__ import annotations

from fleetscore.storage.azure import AzureBlobStore, azurite_connection_string
from fleetscore.storage.base import BlobStore
from fleetscore.storage.folder import FolderStore


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
