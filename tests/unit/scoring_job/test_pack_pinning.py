"""A pack's keys follow the device/sensor id rules, and a pack loads only with the manifest digest it was pinned to."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from sklearn.svm import OneClassSVM

from scoring_job import score
from scoring_job.contract import ID_PATTERN
from scoring_job.pack import MANIFEST, PackError, load_pack, manifest_sha256, verify_manifest, write_pack


@pytest.fixture
def pack_dir(tmp_path):
    rng = np.random.default_rng(0)
    models = {(d, "temp"): OneClassSVM(nu=0.1).fit(rng.normal(size=(40, 4))) for d in ("d-01", "d-02", "d-03")}
    write_pack(models, tmp_path / "v1", version="v1")
    return tmp_path / "v1"


def _edit(folder, change) -> None:
    m = json.loads((folder / MANIFEST).read_bytes())
    change(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def test_the_pinned_digest_is_the_manifest_bytes_sha256_and_any_edit_is_refused(pack_dir):
    raw = (pack_dir / MANIFEST).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    assert manifest_sha256(raw) == digest
    assert load_pack(pack_dir, digest).manifest_sha256 == digest
    assert load_pack(pack_dir).manifest_sha256 == digest  # unpinned: still says what it loaded
    (pack_dir / MANIFEST).write_bytes(raw + b" ")  # the same JSON document, other bytes
    with pytest.raises(PackError, match=f"manifest.json: SHA-256 [0-9a-f]{{64}} is not the {digest} pinned"):
        load_pack(pack_dir, digest)
    with pytest.raises(PackError, match="64 lowercase hex digits"):
        load_pack(pack_dir, "unset")  # a published v1 pipeline's default parameter


@pytest.mark.parametrize("field,value", [("device", "../../x"), ("device", "d 01"), ("sensor", "t/emp"),
                                         ("sensor", "x" * 65), ("device", "d-01\nd-02")])
def test_a_key_outside_the_id_rules_is_refused(pack_dir, field, value):
    assert not ID_PATTERN.fullmatch(value)
    _edit(pack_dir, lambda m: m["models"][field].__setitem__(0, value))
    with pytest.raises(PackError, match=f"models.{field} .* is not a device/sensor id"):
        load_pack(pack_dir)
    with pytest.raises(PackError, match="is not a device/sensor id"):
        verify_manifest((pack_dir / MANIFEST).read_bytes())


def test_ingest_and_the_pack_share_one_id_rule():
    from fleetscore.ingest import readings

    assert readings.ID_PATTERN is ID_PATTERN


def test_write_pack_refuses_keys_ingest_would_refuse(tmp_path):
    est = OneClassSVM(nu=0.1).fit(np.random.default_rng(1).normal(size=(20, 4)))
    with pytest.raises(ValueError, match="not a \\(device, sensor\\) of ids"):
        write_pack({("../../x", "temp"): est}, tmp_path / "bad", version="bad")


def test_the_entry_script_refuses_a_pack_edited_after_its_pin(pack_dir, tmp_path, monkeypatch):
    for name in ("PACK", "OUTPUT", "RUN_ID", "DTYPE"):  # restored after the test
        monkeypatch.setattr(score, name, getattr(score, name))
    digest = manifest_sha256((pack_dir / MANIFEST).read_bytes())
    argv = ["--model_pack", str(pack_dir), "--output", str(tmp_path / "out"), "--model_pack_sha256", digest]
    score.init(argv)
    assert score.PACK.manifest_sha256 == digest
    _edit(pack_dir, lambda m: m.update(created="2020-01-01T00:00:00Z"))
    with pytest.raises(PackError, match="pinned when the pack was activated"):
        score.init(argv)
