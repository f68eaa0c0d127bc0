"""REST contract of the Azure ML backends against local HTTP servers standing in for the endpoints.

The HTTP layer is real (requests → http.server on 127.0.0.1); only the credential is a test object.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure.core.credentials import AccessToken

from fleetscore.backends import aml
from fleetscore.backends.base import Backend, SubmissionError, SubmitRequest
from fleetscore.settings import load_settings

TOKEN = "test-token-5f0c2b7e-not-a-real-secret"
PIPELINE_PATH = ("/pipelines/v1.0/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices"
                 "/workspaces/ws/PipelineRuns/PipelineEndpointSubmit/Id/0b5e6c7a")
REQ = SubmitRequest.for_run("20261123T1005Z", 1795428300000, "v20261120")


class FakeCredential:
    """Stands in for DefaultAzureCredential."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(TOKEN, int(time.time()) + 3600)


class FakeEndpoint:
    """A scripted HTTP endpoint: each request gets the next (status, headers, body, delay) and is recorded."""

    def __init__(self, script: list[tuple[int, dict, object, float]]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.do_POST("GET")

            def do_POST(self, method: str = "POST") -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with lock:
                    outer.requests.append({"method": method, "path": self.path, "headers": dict(self.headers),
                                           "body": json.loads(raw or b"null")})
                    status, headers, body, delay = outer.script.pop(0) if outer.script else (500, {}, "", 0)
                if delay:
                    time.sleep(delay)
                data = body if isinstance(body, str) else json.dumps(body)
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data.encode())))
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    servers: list[FakeEndpoint] = []

    def make(script):
        server = FakeEndpoint(script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def settings(**overrides):
    base = {"aml_experiment": "fleetscore-test", "aml_datastore": "fleet", "aml_submit_timeout_seconds": 5.0}
    return load_settings(**{**base, **overrides})


def test_pipeline_retries_429_then_503_then_accepts(endpoint, caplog):
    server = endpoint([(429, {"Retry-After": "7"}, {"error": "throttled"}, 0),
                       (503, {}, "busy", 0),
                       (200, {}, {"Id": "5e1f-pipeline-run", "Status": "NotStarted"}, 0)])
    credential, sleeps = FakeCredential(), []
    caplog.set_level(logging.DEBUG)
    run_id = aml.submit_pipeline(REQ, settings(aml_pipeline_endpoint=server.url + PIPELINE_PATH), credential,
                                 backoff=0.5, sleep=sleeps.append)
    assert run_id == "5e1f-pipeline-run"
    assert credential.scopes == [("https://management.azure.com/.default",)]
    assert sleeps == [7.0, 1.0]  # Retry-After honoured; then backoff 0.5 * 2**1
    assert len(server.requests) == 3
    for request in server.requests:
        assert request["method"] == "POST" and request["path"] == PIPELINE_PATH
        assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
        assert request["headers"]["Content-Type"] == "application/json"
        assert request["body"] == {
            "ExperimentName": "fleetscore-test", "RunSource": "API",
            "ParameterAssignments": {"run_id": REQ.run_id, "data_path": f"data/{REQ.run_id}",
                                     "model_version": "v20261120"},
        }
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("suffix", ["", "/", "/jobs"])
def test_batch_endpoint_body_headers_and_url(endpoint, suffix):
    server = endpoint([(202, {}, {"id": "/subscriptions/s/jobs/batchjob-1", "name": "batchjob-1"}, 0)])
    credential = FakeCredential()
    s = settings(aml_batch_endpoint=server.url + suffix, aml_batch_deployment="fleetscore-v2",
                 scoring_dtype="float32")
    assert aml.submit_batch_endpoint(REQ, s, credential, sleep=lambda _: None) == "batchjob-1"
    assert credential.scopes == [("https://ml.azure.com/.default",)]
    (request,) = server.requests
    assert request["path"] == "/jobs"
    headers = request["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["azureml-model-deployment"] == "fleetscore-v2"
    assert headers["repeatability_request-id"]
    run = REQ.run_id
    assert request["body"] == {"properties": {
        "inputData": {
            "run_id": {"jobInputType": "Literal", "value": run},
            "dtype": {"jobInputType": "Literal", "value": "float32"},
            "partitions": {"jobInputType": "UriFolder", "uri": f"azureml://datastores/fleet_data/paths/{run}/"},
            "model_pack": {"jobInputType": "UriFolder", "uri": "azureml://datastores/fleet_models/paths/v20261120/"},
        },
        "outputData": {
            "predictions": {"jobOutputType": "UriFolder",
                            "uri": f"azureml://datastores/fleet_predictions/paths/{run}/"},
        },
    }}


def test_batch_endpoint_without_deployment_uses_the_default_one_and_keeps_one_request_id(endpoint):
    server = endpoint([(500, {}, "oops", 0), (200, {}, {"name": "job-2"}, 0)])
    s = settings(aml_batch_endpoint=server.url + "/jobs")
    assert aml.submit_batch_endpoint(REQ, s, FakeCredential(), sleep=lambda _: None) == "job-2"
    first, second = server.requests
    assert "azureml-model-deployment" not in first["headers"]
    assert first["headers"]["repeatability_request-id"] == second["headers"]["repeatability_request-id"]


@pytest.mark.parametrize("submit, key", [(aml.submit_pipeline, "aml_pipeline_endpoint"),
                                         (aml.submit_batch_endpoint, "aml_batch_endpoint")])
def test_no_retry_on_400_and_the_error_carries_status_and_text_not_the_token(endpoint, submit, key, caplog):
    server = endpoint([(400, {}, {"error": {"message": f"bad parameter run_id; saw Bearer {TOKEN}"}}, 0),
                       (200, {}, {"Id": "never", "name": "never"}, 0)])
    sleeps: list[float] = []
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SubmissionError) as info:
        submit(REQ, settings(**{key: server.url}), FakeCredential(), sleep=sleeps.append)
    error = info.value
    assert error.status == 400
    assert "bad parameter run_id" in error.text
    assert TOKEN not in error.text and TOKEN not in str(error) and TOKEN not in repr(error.args)
    assert len(server.requests) == 1 and sleeps == []
    assert TOKEN not in caplog.text


def test_timeouts_are_retried_by_the_batch_endpoint_under_one_request_id(endpoint):
    server = endpoint([(200, {}, {"Id": "too-late"}, 1.5), (200, {}, {"Id": "in-time"}, 0)])
    sleeps: list[float] = []
    s = settings(aml_batch_endpoint=server.url, aml_submit_timeout_seconds=0.3)
    assert aml.submit_batch_endpoint(REQ, s, FakeCredential(), sleep=sleeps.append) == "in-time"
    assert len(server.requests) == 2 and sleeps == [1.0]
    first, second = server.requests
    assert first["headers"]["repeatability_request-id"] == second["headers"]["repeatability_request-id"]


def test_pipeline_read_timeout_is_reported_not_retried(endpoint):
    """The published pipeline has no idempotency key: the slow reply may still start a run, a retry a second."""
    server = endpoint([(200, {}, {"Id": "too-late"}, 1.5), (200, {}, {"Id": "second-run"}, 0)])
    sleeps: list[float] = []
    s = settings(aml_pipeline_endpoint=server.url + PIPELINE_PATH, aml_submit_timeout_seconds=0.3)
    with pytest.raises(SubmissionError, match="may have started") as info:
        aml.submit_pipeline(REQ, s, FakeCredential(), sleep=sleeps.append)
    assert info.value.status is None and "ReadTimeout" in info.value.text
    assert len(server.requests) == 1 and sleeps == []


@pytest.mark.parametrize("status", [408, 500, 502, 504])
def test_pipeline_does_not_retry_a_failure_that_may_have_started_a_run(endpoint, status):
    server = endpoint([(status, {}, "upstream trouble", 0), (200, {}, {"Id": "second-run"}, 0)])
    sleeps: list[float] = []
    with pytest.raises(SubmissionError) as info:
        aml.submit_pipeline(REQ, settings(aml_pipeline_endpoint=server.url), FakeCredential(), sleep=sleeps.append)
    assert info.value.status == status and info.value.text == "upstream trouble"
    assert len(server.requests) == 1 and sleeps == []


def test_pipeline_does_not_retry_a_connection_dropped_after_the_request():
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(65536))  # takes the request, closes without a reply

    threading.Thread(target=serve, daemon=True).start()
    sleeps: list[float] = []
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}{PIPELINE_PATH}"
        with pytest.raises(SubmissionError, match="may have started") as info:
            aml.submit_pipeline(REQ, settings(aml_pipeline_endpoint=url), FakeCredential(), sleep=sleeps.append)
    finally:
        listener.close()
    assert info.value.status is None and "ConnectionError" in info.value.text
    assert len(seen) == 1 and sleeps == []


def test_gives_up_after_the_retries_with_the_last_status(endpoint):
    server = endpoint([(503, {}, "still busy", 0)] * 4)
    sleeps: list[float] = []
    with pytest.raises(SubmissionError) as info:
        aml.submit_pipeline(REQ, settings(aml_pipeline_endpoint=server.url), FakeCredential(), retries=3,
                            backoff=2.0, sleep=sleeps.append)
    assert info.value.status == 503 and info.value.text == "still busy"
    assert len(server.requests) == 4 and sleeps == [2.0, 4.0, 8.0]


@pytest.mark.parametrize("submit, key", [(aml.submit_pipeline, "aml_pipeline_endpoint"),
                                         (aml.submit_batch_endpoint, "aml_batch_endpoint")])
def test_connection_errors_are_retried_then_reported_without_status(submit, key):
    closed = FakeEndpoint([])
    url = closed.url
    closed.close()
    sleeps: list[float] = []
    with pytest.raises(SubmissionError) as info:
        submit(REQ, settings(**{key: url}), FakeCredential(), retries=2, sleep=sleeps.append)
    assert info.value.status is None and "ConnectionError" in info.value.text
    assert len(sleeps) == 2


def test_missing_endpoint_setting_is_a_submission_error():
    with pytest.raises(SubmissionError, match="AML_PIPELINE_ENDPOINT"):
        aml.submit_pipeline(REQ, settings(), FakeCredential())
    with pytest.raises(SubmissionError, match="AML_BATCH_ENDPOINT"):
        aml.submit_batch_endpoint(REQ, settings(), FakeCredential())


def test_backends_follow_the_protocol_and_the_setting(endpoint):
    server = endpoint([(200, {}, {"Id": "p-1"}, 0)])
    backend = aml.aml_backend(settings(scoring_backend="aml-pipeline", aml_pipeline_endpoint=server.url),
                              FakeCredential())
    assert isinstance(backend, Backend) and backend.submit(REQ).backend_run_id == "p-1"
    assert isinstance(aml.aml_backend(settings(scoring_backend="aml-batch-endpoint")), aml.AmlBatchEndpointBackend)
    with pytest.raises(ValueError):
        aml.aml_backend(settings(scoring_backend="local"))


def test_paths_and_urls():
    from scoring_job import pipeline_v2

    assert aml.datastore_uri("fs", "predictions/r1") == "azureml://datastores/fs_predictions/paths/r1/"
    assert aml.datastore_uri is pipeline_v2.datastore_uri  # one definition, shared with the v2 job
    with pytest.raises(ValueError):
        aml.datastore_uri("fs", "/")
    assert aml.jobs_url("https://e.westeurope.inference.ml.azure.com/jobs") == \
        "https://e.westeurope.inference.ml.azure.com/jobs"
    assert aml.jobs_url("https://e.westeurope.inference.ml.azure.com/") == \
        "https://e.westeurope.inference.ml.azure.com/jobs"
    assert REQ.model_pack_path == "models/v20261120" and REQ.output_path == f"predictions/{REQ.run_id}"


def test_the_body_is_what_azure_ai_ml_itself_sends():
    """Same wire shape as ``ml_client.batch_endpoints.invoke(inputs=..., outputs=...)`` ."""
    from pathlib import Path

    import azure.ai.ml  # noqa: F401 - the aml extra is part of the dev install
    from azure.ai.ml import Input, Output
    from azure.ai.ml._schema._deployment.batch.batch_job import BatchJobSchema
    from azure.ai.ml.constants._common import BASE_PATH_CONTEXT_KEY, PARAMS_OVERRIDE_KEY
    from azure.ai.ml.constants._endpoint import EndpointInvokeFields, EndpointYamlFields

    body = aml.batch_endpoint_body(REQ, "fleet", "float64")["properties"]
    inputs = {"run_id": Input(type="string", default=REQ.run_id), "dtype": Input(type="string", default="float64"),
              "partitions": Input(type="uri_folder", path=body["inputData"]["partitions"]["uri"]),
              "model_pack": Input(type="uri_folder", path=body["inputData"]["model_pack"]["uri"])}
    outputs = {"predictions": Output(type="uri_folder", path=body["outputData"]["predictions"]["uri"])}
    context = {BASE_PATH_CONTEXT_KEY: Path("."), PARAMS_OVERRIDE_KEY: [
        {EndpointYamlFields.BATCH_JOB_INPUT_DATA: inputs}, {EndpointYamlFields.BATCH_JOB_OUTPUT_DATA: outputs}]}
    wire = BatchJobSchema(context=context).load(data={})
    assert wire["inputData"] == body["inputData"]
    assert wire["outputData"] == body["outputData"]
    assert EndpointInvokeFields.MODEL_DEPLOYMENT == aml.DEPLOYMENT_HEADER
    assert EndpointInvokeFields.REPEATABILITY_REQUEST_ID == aml.REPEATABILITY_HEADER


# --- a submitted run's job state (the timer reconciles runs with it) -----------------------------------------

WORKSPACE = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"


@pytest.mark.parametrize("code,status,failed", [("Failed", "Failed", True), ("4", "Canceled", True),
                                                ("Finished", "Finished", False), ("1", "Running", False)])
def test_pipeline_run_state_is_read_from_the_pipeline_runs_resource(endpoint, code, status, failed):
    reply = {"Id": "5e1f-run", "Status": {"StatusCode": code, "StatusDetail": "step score: out of memory"}}
    server = endpoint([(503, {}, "busy", 0), (200, {}, reply, 0)])
    credential, sleeps = FakeCredential(), []
    backend = aml.AmlPipelineBackend(settings(aml_pipeline_endpoint=server.url + PIPELINE_PATH), credential,
                                     sleep=sleeps.append)
    state = backend.job_state("5e1f-run")
    assert (state.status, state.failed, state.ended) == (status, failed, status != "Running")
    assert state.message == "step score: out of memory"
    assert sleeps == [1.0] and credential.scopes == [("https://management.azure.com/.default",)]
    for request in server.requests:  # the AE3P path azureml-pipeline-core reads (PipelineRuns/{pipelineRunId})
        assert request["method"] == "GET" and request["body"] is None
        assert request["path"] == "/pipelines/v1.0" + WORKSPACE + "/PipelineRuns/5e1f-run"
        assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_batch_job_state_is_read_from_the_arm_job_resource(endpoint):
    studio = "https://ml.azure.com/runs/batchjob-1?wsid=/subscriptions/sub/resourcegroups/rg/workspaces/ws"
    server = endpoint([(200, {}, {"name": "batchjob-1", "properties": {
        "jobType": "Pipeline", "status": "Failed", "services": {"Studio": {"endpoint": studio}}}}, 0)])
    credential = FakeCredential()
    backend = aml.AmlBatchEndpointBackend(settings(aml_subscription_id="sub", aml_resource_group="rg",
                                                   aml_workspace="ws"), credential, arm_url=server.url)
    state = backend.job_state("batchjob-1")
    assert (state.status, state.failed, state.ended, state.message) == ("Failed", True, True, f"see {studio}")
    (request,) = server.requests
    assert request["method"] == "GET" and request["path"] == WORKSPACE + "/jobs/batchjob-1?api-version=2024-04-01"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert credential.scopes == [("https://management.azure.com/.default",)]


def test_job_state_errors_carry_the_status_and_never_the_token(endpoint):
    server = endpoint([(404, {}, {"error": {"code": "UserError", "message": f"no job; Bearer {TOKEN}"}}, 0)])
    backend = aml.AmlBatchEndpointBackend(settings(aml_subscription_id="sub", aml_resource_group="rg",
                                                   aml_workspace="ws"), FakeCredential(), arm_url=server.url)
    with pytest.raises(SubmissionError) as info:
        backend.job_state("gone")
    assert info.value.status == 404 and TOKEN not in str(info.value) and len(server.requests) == 1
    with pytest.raises(SubmissionError, match="AML_SUBSCRIPTION_ID"):
        aml.AmlBatchEndpointBackend(settings(), FakeCredential()).job_state("j")
    with pytest.raises(SubmissionError, match="AML_PIPELINE_ENDPOINT"):
        aml.AmlPipelineBackend(settings(aml_pipeline_endpoint="https://example.invalid/x"),
                               FakeCredential()).job_state("j")
