"""`fleetscore status`'s model-pack section, read from the manifest alone."""

from __future__ import annotations

import json

from fleetscore.cli.status import model_status
from fleetscore.storage.folder import FolderStore
from tests.helpers.fleet import put_pack


def test_model_status_counts_the_algorithms_of_the_current_pack(tmp_path):
    store = FolderStore(tmp_path)
    assert model_status(store) == {"version": None}
    put_pack(store, "v1", {("d-1", "temp"): None, ("d-2", "temp"): None, ("d-3", "rh"): None})
    store.put("models/CURRENT", b"v1\n")
    status = model_status(store)
    assert status["models"] == 3 and status["algorithms"] == {"ocsvm-rbf": 3}  # stored once in the manifest
    assert status["features"] == ["mean", "min", "max", "std"] and status["created"].endswith("Z")

    manifest = json.loads(store.get("models/v1/manifest.json"))
    manifest["models"]["algorithm"] = ["ocsvm-rbf"]  # one value for three models
    store.put("models/v1/manifest.json", json.dumps(manifest).encode())
    assert "models.algorithm must be a list of 3 values" in model_status(store)["error"]
