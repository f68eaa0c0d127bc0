"""Every backend satisfies the one declared contract, so the run service needs no special case."""

from __future__ import annotations

from fleetscore.backends import backend_for
from fleetscore.backends.aml import AmlBatchEndpointBackend, AmlPipelineBackend
from fleetscore.backends.base import Backend, SubmitRequest
from fleetscore.backends.local import LocalBackend
from fleetscore.settings import load_settings
from fleetscore.storage.folder import FolderStore


def test_each_backend_is_a_backend_and_says_whether_it_scores_in_process(tmp_path):
    local = backend_for(load_settings(FLEETSCORE_STORAGE=str(tmp_path)), FolderStore(tmp_path))
    pipeline = backend_for(load_settings(SCORING_BACKEND="aml-pipeline"), FolderStore(tmp_path))
    batch = backend_for(load_settings(SCORING_BACKEND="aml-batch-endpoint"), FolderStore(tmp_path))
    assert isinstance(local, LocalBackend) and local.in_process is True
    assert isinstance(pipeline, AmlPipelineBackend) and pipeline.in_process is False
    assert isinstance(batch, AmlBatchEndpointBackend) and batch.in_process is False
    assert all(isinstance(b, Backend) for b in (local, pipeline, batch))


def test_a_remote_backend_takes_the_run_whole_and_has_nothing_to_cancel(tmp_path):
    backend = backend_for(load_settings(SCORING_BACKEND="aml-batch-endpoint"), FolderStore(tmp_path))
    assert backend.open_feed(SubmitRequest.for_run("r1", 0, "v1")) is None
    assert backend.cancel() is None


def test_the_standard_request_layout_comes_from_the_storage_paths():
    req = SubmitRequest.for_run("20261123T1005Z", 0, "v7")
    assert (req.data_path, req.model_pack_path, req.output_path) == (
        "data/20261123T1005Z", "models/v7", "predictions/20261123T1005Z")
    assert req.partitions == ()
