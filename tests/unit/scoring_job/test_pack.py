"""The model pack: round trip, bring-your-own estimators, and every way a bad pack is refused."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import pathlib
import zipfile

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from scoring_job import engine
from scoring_job.pack import (
    FORMAT_VERSION,
    MANIFEST,
    QUANTILES,
    SKOPS_FILE,
    PackError,
    SvmModel,
    load_pack,
    pack_from_estimators,
    svm_shard_name,
    write_pack,
)

FEATURES = ["mean", "min", "max", "std"]
SVM_FILE = svm_shard_name(0)  # a small pack's SVMs fit in one shard


def training_windows(rng, keys, n=120):
    parts = []
    for d, s in keys:
        X = rng.normal([20.0, 18.0, 22.0, 1.0], [1.0, 1.0, 1.0, 0.1], size=(n, 4))
        parts.append(pd.DataFrame({"device": d, "sensor": s, "n": 12,
                                   "window_end": pd.date_range("2026-11-01", periods=n, freq="5min", tz="UTC"),
                                   **dict(zip(FEATURES, X.T, strict=True))}))
    return pd.concat(parts, ignore_index=True)


def fitted(rng):
    keys = [("d-01", "temp"), ("d-01", "hum"), ("d-02", "temp"), ("d-03", "temp"), ("d-04", "temp"),
            ("d-05", "temp"), ("d-06", "temp")]
    train = training_windows(rng, keys)

    def X(key):
        rows = train[(train["device"] == key[0]) & (train["sensor"] == key[1])]
        return rows[FEATURES].to_numpy()

    models = {
        keys[0]: make_pipeline(StandardScaler(), OneClassSVM(nu=0.05, gamma="scale")).fit(X(keys[0])),
        keys[1]: OneClassSVM(kernel="linear", nu=0.1).fit(X(keys[1])),
        keys[2]: IsolationForest(n_estimators=20, random_state=0).fit(X(keys[2])),
        keys[3]: make_pipeline(StandardScaler(), LocalOutlierFactor(novelty=True)).fit(X(keys[3])),
        keys[4]: EllipticEnvelope(random_state=0).fit(X(keys[4])),
        keys[5]: OneClassSVM(nu=0.2, gamma=0.05).fit(X(keys[5])),
        keys[6]: make_pipeline(StandardScaler(), OneClassSVM(kernel="sigmoid", nu=0.1)).fit(X(keys[6])),
    }
    return models, train


@pytest.fixture
def pack_dir(tmp_path):
    models, train = fitted(np.random.default_rng(0))
    folder = tmp_path / "v1"
    pack_from_estimators(models, folder, train, version="v1")
    return folder


def rewrite(folder: pathlib.Path, name: str, data: bytes, fix_manifest: bool = True) -> None:
    """Replace one pack file; with fix_manifest, also its SHA-256 and size (a consistent but hostile pack)."""
    (folder / name).write_bytes(data)
    if fix_manifest:
        m = json.loads((folder / MANIFEST).read_text())
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (folder / MANIFEST).write_text(json.dumps(m))


def test_round_trip_keeps_every_model_and_its_training_record(tmp_path):
    rng = np.random.default_rng(1)
    models, train = fitted(rng)
    manifest = pack_from_estimators(models, tmp_path / "v7", train, version="v7", window_minutes=5)
    pack = load_pack(tmp_path / "v7")
    assert pack.version == "v7" and pack.features == tuple(FEATURES) and pack.window_minutes == 5
    assert len(pack) == len(models) and pack.keys() == sorted(models)
    assert set(manifest["files"]) == {SVM_FILE, SKOPS_FILE}
    X = rng.normal([20.0, 18.0, 22.0, 1.0], 2.0, size=(50, 4))
    for key, est in models.items():
        assert key in pack
        entry = pack[key]
        loaded = pack.model(key)
        np.testing.assert_allclose(loaded.decision_function(X), est.decision_function(X), rtol=1e-10, atol=1e-10)
        rows = train[(train["device"] == key[0]) & (train["sensor"] == key[1])]
        assert entry["train_from"] == "2026-11-01T00:00:00Z"
        assert pd.Timestamp(entry["train_until"]) == rows["window_end"].max()
        assert entry["train_size"] == len(rows)
        scores = -est.decision_function(rows[FEATURES].to_numpy())
        expect = dict(zip([n for n, _ in QUANTILES], np.quantile(scores, [q for _, q in QUANTILES]), strict=True))
        assert entry["score_quantiles"] == pytest.approx(expect)
    assert pack[("d-01", "temp")]["algorithm"] == "ocsvm-rbf" and pack[("d-01", "temp")]["store"] == "svm"
    assert pack[("d-01", "hum")]["algorithm"] == "ocsvm-linear" and pack[("d-01", "hum")]["store"] == "svm"
    assert pack[("d-06", "temp")]["store"] == "skops"  # sigmoid OCSVM: not the array fast path
    assert isinstance(pack.model(("d-01", "temp")), SvmModel)
    table = pack.training_table()
    assert list(table["device"]) == [k[0] for k in sorted(models)]
    assert table["train_size"].tolist() == [pack[k]["train_size"] for k in sorted(models)]
    assert table["score_q99"].notna().all()


def test_same_models_write_the_same_array_bytes(tmp_path):
    models, _ = fitted(np.random.default_rng(2))
    write_pack(models, tmp_path / "a", version="a")
    write_pack(models, tmp_path / "b", version="b")
    assert (tmp_path / "a" / SVM_FILE).read_bytes() == (tmp_path / "b" / SVM_FILE).read_bytes()
    with pytest.raises(FileExistsError):
        write_pack(models, tmp_path / "a", version="a")


def test_bring_your_own_estimators_then_score(tmp_path):
    rng = np.random.default_rng(3)
    own = {("pump-7", "vibration"): make_pipeline(StandardScaler(), OneClassSVM(nu=0.1)).fit(rng.normal(size=(80, 4))),
           (42, "temp"): IsolationForest(n_estimators=10, random_state=0).fit(rng.normal(size=(80, 4)))}
    pack_from_estimators(own, tmp_path / "byo", version="byo")
    pack = load_pack(tmp_path / "byo")
    assert pack.keys() == [("42", "temp"), ("pump-7", "vibration")]  # keys become strings
    assert pack[("42", "temp")]["score_quantiles"] is None and pack[("42", "temp")]["train_size"] is None
    X = rng.normal(size=(5, 4))
    feats = pd.DataFrame({"device": ["pump-7"] * 5, "sensor": "vibration", "n": 3,
                          "window_end": pd.date_range("2026-11-23", periods=5, freq="5min", tz="UTC"),
                          **dict(zip(FEATURES, X.T, strict=True))})
    out = engine.score(feats, pack).predictions
    np.testing.assert_allclose(-out["score"], own[("pump-7", "vibration")].decision_function(X), rtol=1e-9)


def test_estimators_the_pack_cannot_score_are_refused_when_writing(tmp_path):
    X = np.random.default_rng(4).normal(size=(60, 4))
    with pytest.raises(ValueError, match="novelty"):
        write_pack({("d", "s"): LocalOutlierFactor().fit(X)}, tmp_path / "a")
    with pytest.raises(ValueError, match="pipeline"):
        write_pack({("d", "s"): make_pipeline(StandardScaler(), StandardScaler(), OneClassSVM()).fit(X)},
                   tmp_path / "b")


def test_svms_are_split_into_shards_that_load_as_one_fleet(tmp_path):
    rng = np.random.default_rng(8)
    models = {(f"d-{i:02d}", "temp"): make_pipeline(StandardScaler(), OneClassSVM(nu=0.2, gamma="scale")).fit(
        rng.normal(size=(40 + 3 * i, 4))) for i in range(12)}
    manifest = write_pack(models, tmp_path / "sharded", version="sharded", shard_bytes=2048)
    write_pack(models, tmp_path / "single", version="single")
    shards = manifest["svm"]["shards"]
    assert len(shards) > 3 and [sh["file"] for sh in shards] == [svm_shard_name(i) for i in range(len(shards))]
    assert sum(sh["models"] for sh in shards) == 12 and set(manifest["files"]) == {sh["file"] for sh in shards}
    sharded, single = load_pack(tmp_path / "sharded"), load_pack(tmp_path / "single")
    assert len(sharded.svm_shards) == len(shards) and len(single.svm_shards) == 1
    for k, whole in single.svm_shards[0].items():
        np.testing.assert_array_equal(np.concatenate([sh[k] for sh in sharded.svm_shards]), whole)
    np.testing.assert_array_equal(engine.prepare(sharded).svm_row, engine.prepare(single).svm_row)
    for field in dataclasses.fields(engine.SvmArrays):
        np.testing.assert_array_equal(getattr(engine.prepare(sharded).svm, field.name),
                                      getattr(engine.prepare(single).svm, field.name))
    for key, est in models.items():
        X = rng.normal(size=(7, 4))
        np.testing.assert_allclose(sharded.model(key).decision_function(X), est.decision_function(X), rtol=1e-10)
        feats = pd.DataFrame({"device": key[0], "sensor": key[1], "n": 3,
                              "window_end": pd.date_range("2026-11-23", periods=7, freq="5min", tz="UTC"),
                              **dict(zip(FEATURES, X.T, strict=True))})
        np.testing.assert_allclose(-engine.score(feats, sharded).predictions["score"], est.decision_function(X),
                                   rtol=1e-9)

    last = tmp_path / "sharded" / shards[-1]["file"]
    data = bytearray(last.read_bytes())
    data[-100] ^= 0x01
    last.write_bytes(bytes(data))
    with pytest.raises(PackError, match=f"{shards[-1]['file']}: SHA-256"):
        load_pack(tmp_path / "sharded")
    last.unlink()
    with pytest.raises(PackError, match="missing"):
        load_pack(tmp_path / "sharded")


def test_files_are_read_where_they_cannot_be_mapped(pack_dir, monkeypatch):
    import scoring_job.pack as pack_module

    def no_mmap(*args, **kwargs):
        raise OSError(19, "No such device")  # what mmap(2) says on a filesystem without it

    mapped = load_pack(pack_dir)
    monkeypatch.setattr(pack_module.mmap, "mmap", no_mmap)
    read = load_pack(pack_dir)
    assert isinstance(read.svm_shards[0]["sv"].base, bytes)
    np.testing.assert_array_equal(read.svm_shards[0]["sv"], mapped.svm_shards[0]["sv"])
    del mapped, read  # the file is rewritten in place below: no mapping of it may be in use
    data = bytearray((pack_dir / SVM_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (pack_dir / SVM_FILE).write_bytes(bytes(data))
    with pytest.raises(PackError, match="SHA-256"):
        load_pack(pack_dir)


def test_a_tampered_array_is_refused(pack_dir):
    data = bytearray((pack_dir / SVM_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the support vectors
    rewrite(pack_dir, SVM_FILE, bytes(data), fix_manifest=False)
    with pytest.raises(PackError, match="SHA-256"):
        load_pack(pack_dir)


def test_a_wrong_checksum_is_refused(pack_dir):
    m = json.loads((pack_dir / MANIFEST).read_text())
    m["files"][SKOPS_FILE]["sha256"] = "0" * 64
    (pack_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(PackError, match="SHA-256"):
        load_pack(pack_dir)


def test_a_missing_file_is_refused(pack_dir):
    (pack_dir / SVM_FILE).unlink()
    with pytest.raises(PackError, match="missing"):
        load_pack(pack_dir)


def column(m, field):
    """A table column as a list (the manifest stores a column whose models all agree as one value)."""
    t = m["models"]
    if not isinstance(t[field], list):
        t[field] = [t[field]] * t["count"]
    return t[field]


def _swap_first_two(m):
    t = m["models"]
    for f in ("device", "sensor"):
        t[f][0], t[f][1] = t[f][1], t[f][0]


MALFORMED = {
    "not an object": lambda m: [1, 2],
    "no version": lambda m: m.pop("version"),
    "bad version name": lambda m: m.update(version="../../etc"),
    "future format": lambda m: m.update(format_version=FORMAT_VERSION + 1),
    "format 1 (one svm.npz)": lambda m: m.update(format_version=1),
    "other format": lambda m: m.update(format="zip"),
    "no features": lambda m: m.update(features=[]),
    "svm section not an object": lambda m: m.update(svm=[]),
    "count mismatch": lambda m: m["models"].update(count=m["models"]["count"] + 1),
    "unsorted models": _swap_first_two,
    "duplicate model": lambda m: m["models"]["device"].__setitem__(1, m["models"]["device"][0])
    or m["models"]["sensor"].__setitem__(1, m["models"]["sensor"][0]),
    "string n_features": lambda m: column(m, "n_features").__setitem__(0, "4"),
    "bool n_features": lambda m: column(m, "n_features").__setitem__(0, True),
    "one value of the wrong type": lambda m: m["models"].update(scaled="yes"),
    "device as one value": lambda m: m["models"].update(device="d-01"),
    "array size mismatch": lambda m: m["svm"]["shards"][0]["arrays"]["sv"].__setitem__(0, 12),
    "shard not listed": lambda m: m["files"].update({svm_shard_name(1): m["files"][SVM_FILE]}),
    "shard model count": lambda m: m["svm"]["shards"][0].update(models=m["svm"]["models"] + 1),
    "unknown store": lambda m: column(m, "store").__setitem__(0, "pickle"),
    "bad sha format": lambda m: m["files"][SVM_FILE].update(sha256="xyz"),
    "unknown model field": lambda m: m["models"].update(loader=["x"] * m["models"]["count"]),
    "quantiles not base64": lambda m: m["models"]["score_quantiles"].update(q50="high!"),
    "quantiles of the wrong length": lambda m: m["models"]["score_quantiles"].update(
        q50=base64.b64encode(np.zeros(1).tobytes()).decode()),
    "quantiles as JSON numbers": lambda m: m["models"]["score_quantiles"].update(q50=[0.0] * m["models"]["count"]),
    "infinite quantile": lambda m: m["models"]["score_quantiles"].update(
        q50=base64.b64encode(np.full(m["models"]["count"], np.inf).tobytes()).decode()),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_refused(pack_dir, case):
    m = json.loads((pack_dir / MANIFEST).read_text())
    out = MALFORMED[case](m)
    (pack_dir / MANIFEST).write_text(json.dumps(out if case == "not an object" else m))
    with pytest.raises(PackError, match="manifest.json"):
        load_pack(pack_dir)


def test_a_manifest_that_is_not_json_is_refused(pack_dir):
    (pack_dir / MANIFEST).write_text("{'version': 1")
    with pytest.raises(PackError, match="not valid JSON"):
        load_pack(pack_dir)


def test_a_manifest_naming_an_untrusted_file_or_algorithm_is_refused(pack_dir):
    m = json.loads((pack_dir / MANIFEST).read_text())
    m["files"]["model.pkl"] = {"sha256": "0" * 64, "bytes": 1}
    (pack_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(PackError, match="unexpected file 'model.pkl'"):
        load_pack(pack_dir)
    m["files"].pop("model.pkl")
    row = column(m, "store").index("svm")
    column(m, "algorithm")[row] = "pickle:os.system"
    (pack_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(PackError, match="only ocsvm-rbf / ocsvm-linear"):
        load_pack(pack_dir)


def test_a_skops_file_naming_an_untrusted_type_is_refused(pack_dir):
    X = np.random.default_rng(5).normal(size=(40, 4))
    m = json.loads((pack_dir / MANIFEST).read_text())
    evil = sio.dumps([LogisticRegression().fit(X, X[:, 0] > 0)] * m["skops"]["models"])  # consistent checksum
    rewrite(pack_dir, SKOPS_FILE, evil)
    with pytest.raises(PackError, match="untrusted types.*LogisticRegression"):
        load_pack(pack_dir)


class _Marker:
    """Unpickling this touches a file: proof that a pickle inside the pack was (not) executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_an_object_array_in_the_svm_file_is_never_unpickled(pack_dir, tmp_path):
    marker = tmp_path / "unpickled"
    with np.load(pack_dir / SVM_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["sv"] = np.array([_Marker(marker)] * len(arrays["sv"]), dtype=object)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, a in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, a, allow_pickle=True)
            zf.writestr(k + ".npy", member.getvalue())
    rewrite(pack_dir, SVM_FILE, buf.getvalue())
    with pytest.raises(PackError, match="only 1-D float64"):
        load_pack(pack_dir)
    assert not marker.exists()


def test_a_skops_file_that_is_not_a_zip_is_refused(pack_dir):
    rewrite(pack_dir, SKOPS_FILE, b"\x80\x04not a zip")
    with pytest.raises(PackError, match="not a readable skops file"):
        load_pack(pack_dir)


@pytest.mark.parametrize("payload", [b"not a zip at all", b"PK\x05\x06" + b"\xff" * 18])
def test_an_array_file_that_is_not_an_npz_is_refused(pack_dir, payload):
    rewrite(pack_dir, SVM_FILE, payload)  # consistent checksum, hostile content
    with pytest.raises(PackError, match=SVM_FILE):
        load_pack(pack_dir)
