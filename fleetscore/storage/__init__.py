"""Blob storage: the store adapters (folder, Azurite, Azure Storage) and the one module of container keys."""
