"""The blob store: one suite against a local folder and a real Azurite, plus open_store's dispatch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from fleetscore.storage import open_store
from fleetscore.storage.azure import AZURITE_ACCOUNT_KEY, AzureBlobStore
from fleetscore.storage.base import TMP_PREFIX, BlobConflict, BlobInfo, BlobNotFound, BlobStore, split_key
from fleetscore.storage.folder import FolderStore
from tests.helpers import REPO

# ------------------------------------------------------------------------------- both stores


def test_put_get_info_exists(store):
    assert isinstance(store, BlobStore)
    assert not store.exists("models/CURRENT")
    assert store.info("models/CURRENT") is None

    written = store.put("models/CURRENT", b"v0001\n")
    assert isinstance(written, BlobInfo)
    assert written.name == "models/CURRENT"
    assert written.size == 6
    assert written.etag.startswith('"') and written.etag.endswith('"')
    assert written.last_modified_ms > 1_700_000_000_000

    assert store.get("models/CURRENT") == b"v0001\n"
    assert store.exists("models/CURRENT")
    info = store.info("models/CURRENT")
    assert info is not None
    assert (info.name, info.etag, info.size) == ("models/CURRENT", written.etag, 6)
    assert abs(info.last_modified_ms - written.last_modified_ms) < 1000
    assert (info.container, info.blob_name) == ("models", "CURRENT")


def test_empty_and_binary_blobs(store):
    payload = bytes(range(256)) * 4096  # 1 MiB of every byte value
    store.put("data/r/bin.dat", payload)
    store.put("data/r/empty", b"")
    assert store.get("data/r/bin.dat") == payload
    assert store.get("data/r/empty") == b""
    assert store.info("data/r/empty").size == 0


def test_list_by_prefix_is_sorted_and_scoped(store):
    keys = [
        "data/run1/part-00001.parquet",
        "data/run1/part-00000.parquet",
        "data/run1/manifest.json",
        "data/run10/part-00000.parquet",
        "data/run2/part-00000.parquet",
        "predictions/run1/part-00000.parquet",
    ]
    for i, key in enumerate(keys):
        store.put(key, f"blob {i}".encode())

    names = lambda prefix: [i.name for i in store.list(prefix)]  # noqa: E731
    assert names("data/run1/") == ["data/run1/manifest.json", "data/run1/part-00000.parquet",
                                   "data/run1/part-00001.parquet"]
    assert names("data/run1/part-") == ["data/run1/part-00000.parquet", "data/run1/part-00001.parquet"]
    # a plain string prefix, as Azure's: without the slash run10 matches too
    assert names("data/run1") == names("data/run1/") + ["data/run10/part-00000.parquet"]
    assert names("data") == sorted(k for k in keys if k.startswith("data/"))
    assert names("data/") == names("data")
    assert names("predictions/") == ["predictions/run1/part-00000.parquet"]
    assert names("data/run3/") == []
    assert names("alerts/") == []  # a container nobody wrote to yet

    listed = {i.name: i for i in store.list("data/run1/")}
    for name, info in listed.items():
        assert info == store.info(name)


def test_nested_names(store):
    key = "alerts/2026/11/23/a-0001.json"
    body = json.dumps({"alert_id": "a-0001"}).encode()
    store.put(key, body)
    store.put("alerts/2026/11/24/a-0002.json", b"{}")
    assert store.get(key) == body
    assert [i.name for i in store.list("alerts/2026/11/23/")] == [key]
    assert [i.name for i in store.list("alerts/2026/")] == [key, "alerts/2026/11/24/a-0002.json"]


def test_delete(store):
    store.put("data/r/a", b"a")
    store.put("data/r/b", b"b")
    store.delete("data/r/a")
    assert not store.exists("data/r/a")
    assert [i.name for i in store.list("data/r/")] == ["data/r/b"]
    store.delete("data/r/a")  # missing: no error
    store.delete("alerts/never/written")  # missing container: no error


def test_missing_key_raises_blob_not_found(store):
    with pytest.raises(BlobNotFound):
        store.get("models/nope")
    with pytest.raises(KeyError):  # BlobNotFound is a KeyError
        store.get_with_info("models/nope")
    with pytest.raises(BlobNotFound):
        store.get("alerts/x/y.json")  # container may not exist either
    store.put("data/r/dir/file", b"x")
    with pytest.raises(BlobNotFound):
        store.get("data/r/dir")  # a "folder" is not a blob
    assert store.info("data/r/dir") is None


def test_etag_changes_on_every_rewrite(store):
    etags = [store.put("models/CURRENT", b"same bytes").etag for _ in range(8)]
    assert len(set(etags)) == len(etags)
    assert store.info("models/CURRENT").etag == etags[-1]


def test_if_match_is_compare_and_swap(store):
    first = store.put("models/CURRENT", b"v1")
    second = store.put("models/CURRENT", b"v2", if_match=first.etag)
    assert second.etag != first.etag
    assert store.get("models/CURRENT") == b"v2"

    with pytest.raises(BlobConflict):
        store.put("models/CURRENT", b"v3", if_match=first.etag)  # stale
    assert store.get_with_info("models/CURRENT") == (b"v2", store.info("models/CURRENT"))
    assert store.info("models/CURRENT").etag == second.etag

    with pytest.raises(BlobConflict):
        store.put("models/missing", b"x", if_match=first.etag)  # no blob matches any etag
    assert not store.exists("models/missing")

    for not_an_etag in ("*", ""):
        with pytest.raises(ValueError):
            store.put("models/CURRENT", b"v4", if_match=not_an_etag)
    assert store.get("models/CURRENT") == b"v2"


def test_overwrite_false_creates_once(store):
    created = store.put("data/r/manifest.json", b"one", overwrite=False)
    with pytest.raises(BlobConflict):
        store.put("data/r/manifest.json", b"two", overwrite=False)
    assert store.get_with_info("data/r/manifest.json")[1].etag == created.etag
    assert store.get("data/r/manifest.json") == b"one"
    with pytest.raises(ValueError):
        store.put("data/r/manifest.json", b"x", overwrite=False, if_match=created.etag)


def test_concurrent_compare_and_swap_loses_no_update(store):
    store.put("models/counter", b"0")
    threads, rounds = 4, 8

    def bump():
        for _ in range(rounds):
            while True:
                data, info = store.get_with_info("models/counter")
                try:
                    store.put("models/counter", str(int(data) + 1).encode(), if_match=info.etag)
                    break
                except BlobConflict:
                    continue

    workers = [threading.Thread(target=bump) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert int(store.get("models/counter")) == threads * rounds


def test_get_with_info_is_one_version(store):
    store.put("models/v1/manifest.json", b'{"version": 1}')
    data, info = store.get_with_info("models/v1/manifest.json")
    assert data == b'{"version": 1}'
    assert info == store.info("models/v1/manifest.json")
    assert info.size == len(data)
    rewritten = store.put("models/v1/manifest.json", b'{"version": 2}')
    data2, info2 = store.get_with_info("models/v1/manifest.json")
    assert (data2, info2.etag) == (b'{"version": 2}', rewritten.etag)


def test_put_file(store, tmp_path):
    src = tmp_path / "part.parquet"
    src.write_bytes(b"PAR1" + os.urandom(300_000) + b"PAR1")
    info = store.put_file("data/r/part-00000.parquet", src)
    assert info.size == src.stat().st_size
    assert store.get("data/r/part-00000.parquet") == src.read_bytes()
    assert store.info("data/r/part-00000.parquet").etag == info.etag


def test_upload_dir_download_prefix_round_trip(store, tmp_path):
    src = tmp_path / "src"
    files = {
        "manifest.json": b'{"partitions": 2}',
        "part-00000.parquet": os.urandom(5000),
        "part-00001.parquet": os.urandom(7000),
        "nested/deeper/x.bin": b"x",
        "empty": b"",
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    store.put("data/run10/part-00000.parquet", b"another run")  # must not come along

    uploaded = store.upload_dir(src, "data/run1")
    assert [i.name for i in uploaded] == sorted(f"data/run1/{rel}" for rel in files)
    assert [i.name for i in store.list("data/run1/")] == [i.name for i in uploaded]

    dest = tmp_path / "dest"
    paths = store.download_prefix("data/run1", dest)
    assert sorted(p.relative_to(dest).as_posix() for p in paths) == sorted(files)
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert not any(p.name.startswith(TMP_PREFIX) for p in dest.rglob("*"))

    # the same with a trailing slash, into a folder that exists already
    again = store.download_prefix("data/run1/", dest)
    assert sorted(again) == sorted(paths)
    assert store.download_prefix("data/none/", tmp_path / "none") == []


def test_local_path(store):
    store.put("data/r/part-00000.parquet", b"abc")
    path = store.local_path("data/r/part-00000.parquet")
    if isinstance(store, FolderStore):
        assert path is not None and path.read_bytes() == b"abc"
        assert store.local_path("data/r") == path.parent
    else:
        assert path is None


BAD_KEYS = ["", "/data/x", "data/../x", "../data/x", "data/./x", "data//x", "data\\x", "data/x\\y", "data/",
            "data", "Data/x", "da/x", "data/x/", "C:/data/x", "data/\x00x", f"data/{TMP_PREFIX}x"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_rejected(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        split_key(key)


@pytest.mark.parametrize("prefix", ["", "/data", "../data", "data/../x", "data//x", "Data/x", "data\\x"])
def test_bad_prefixes_rejected(store, prefix):
    with pytest.raises(ValueError):
        store.list(prefix)


def test_describe_names_the_store(store):
    text = store.describe()
    assert text
    assert AZURITE_ACCOUNT_KEY not in text and "AccountKey" not in text


# ------------------------------------------------------------------------------- one store


def test_folder_store_is_atomic_and_ignores_temp_files(make_store):
    store = make_store("folder")
    store.put("data/r/a", b"a")
    folder = store.local_path("data/r")
    (folder / f"{TMP_PREFIX}half-written").write_bytes(b"partial")
    assert [i.name for i in store.list("data/")] == ["data/r/a"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["a", f"{TMP_PREFIX}half-written"])
    # a reader keeps the version it opened while a writer replaces the blob
    with open(store.local_path("data/r/a"), "rb") as fh:
        store.put("data/r/a", b"b" * 10)
        assert fh.read() == b"a"
    assert store.get("data/r/a") == b"b" * 10
    assert [p.name for p in store.root.rglob(f"{TMP_PREFIX}*")] == [f"{TMP_PREFIX}half-written"]  # only ours


def test_folder_store_shared_by_two_handles(make_store, tmp_path):
    one = FolderStore(tmp_path / "shared")
    two = FolderStore(tmp_path / "shared")
    first = one.put("models/CURRENT", b"v1")
    assert two.info("models/CURRENT") == first
    two.put("models/CURRENT", b"v2", if_match=first.etag)
    with pytest.raises(BlobConflict):
        one.put("models/CURRENT", b"v3", if_match=first.etag)


@pytest.mark.azurite
def test_azure_creates_missing_container(make_store):
    store = make_store("azurite")
    service = store.service_client
    if any(c.name == "alerts" for c in service.list_containers()):
        service.delete_container("alerts")
    assert store.list("alerts/") == []
    store.put("alerts/2026/01/01/a.json", b"{}")
    assert store.get("alerts/2026/01/01/a.json") == b"{}"
    props = service.get_blob_client("alerts", "2026/01/01/a.json").get_blob_properties()
    assert props.content_settings.content_type == "application/json"


# ------------------------------------------------------------------------------- open_store


@pytest.fixture
def no_network(monkeypatch):
    """Any outgoing connection fails the test: constructing a store must not connect."""

    def refuse(self, address):
        raise AssertionError(f"unexpected connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_open_store_folder(tmp_path, monkeypatch, no_network):
    store = open_store(str(tmp_path / "blobs"))
    assert isinstance(store, FolderStore)
    assert store.root == (tmp_path / "blobs").resolve()
    monkeypatch.chdir(tmp_path)
    relative = open_store(".fleetscore/blobs")
    assert isinstance(relative, FolderStore)
    assert relative.root == (tmp_path / ".fleetscore" / "blobs").resolve()
    assert str(relative.root) in relative.describe()
    with pytest.raises(ValueError):
        open_store("   ")


def test_open_store_development_storage(no_network):
    store = open_store("UseDevelopmentStorage=true")
    assert isinstance(store, AzureBlobStore)
    assert store.account_name == "devstoreaccount1"
    assert store.endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    assert store.local_path("data/x") is None
    assert "AccountKey" not in store.describe() and AZURITE_ACCOUNT_KEY not in store.describe()
    assert "devstoreaccount1" in store.describe()


def test_open_store_connection_string(no_network):
    key = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWs="
    conn = (f"DefaultEndpointsProtocol=https;AccountName=fleetacct;AccountKey={key};"
            "EndpointSuffix=core.windows.net")
    store = open_store(conn)
    assert isinstance(store, AzureBlobStore)
    assert store.account_name == "fleetacct"
    assert store.endpoint == "https://fleetacct.blob.core.windows.net"
    assert key not in store.describe() and key not in repr(store) and "AccountKey" not in store.describe()

    azurite_style = open_store("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                               f"AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:12345/devstoreaccount1;")
    assert isinstance(azurite_style, AzureBlobStore)
    assert azurite_style.endpoint == "http://127.0.0.1:12345/devstoreaccount1"
    assert AZURITE_ACCOUNT_KEY not in azurite_style.describe()

    sas = open_store("BlobEndpoint=https://fleetacct.blob.core.windows.net/;SharedAccessSignature=sv=2024&sig=SECRETSIG")
    assert isinstance(sas, AzureBlobStore)
    assert "SECRETSIG" not in sas.describe()


@pytest.mark.parametrize("url", ["https://fleetacct.blob.core.windows.net", "https://fleetacct.blob.core.windows.net/"])
def test_open_store_account_url_uses_default_credential(url, no_network):
    store = open_store(url)
    assert isinstance(store, AzureBlobStore)
    assert store.auth == "DefaultAzureCredential"
    assert type(store.service_client.credential).__name__ == "DefaultAzureCredential"
    assert store.account_name == "fleetacct"
    assert "DefaultAzureCredential" in store.describe()


def test_open_store_account_url_with_sas_needs_no_credential(no_network):
    store = open_store("https://fleetacct.blob.core.windows.net/?sv=2024-11-04&ss=b&sig=SECRETSIG")
    assert store.auth == "SAS"
    assert "SECRETSIG" not in store.describe()


def test_import_does_not_load_the_azure_sdk(tmp_path):
    code = (
        "import sys, fleetscore.storage as b\n"
        f"s = b.open_store({str(tmp_path / 'blobs')!r})\n"
        "s.put('data/x/y', b'1'); s.list('data/'); s.get('data/x/y')\n"
        "print([m for m in sys.modules if m.startswith(('azure.storage', 'azure.identity', 'azure.core'))])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_mistyped_connection_string_is_refused_without_echoing_it():
    from fleetscore.storage import open_store

    spec = "DefaultEndpointsProtocol=https;AcountName=typo;AccountKey=c2VjcmV0LWtleQ==;EndpointSuffix=core.windows.net"
    with pytest.raises(ValueError) as info:
        open_store(spec)
    assert "c2VjcmV0LWtleQ==" not in str(info.value) and "FLEETSCORE_STORAGE" in str(info.value)
