"""Azure ML backends, submitted over REST (the Functions app never imports the Azure ML SDK).

* ``aml-pipeline``: POST to a published pipeline (or pipeline endpoint) URL, SDK v1's REST contract::

      {"ExperimentName": ..., "RunSource": "API", "ParameterAssignments": {"run_id": ..., "data_path": ...,
       "model_version": ..., "model_sha256": ...}}

  with a token for ``https://management.azure.com/.default``; the response's ``Id`` is the pipeline run id.
* ``aml-batch-endpoint``: POST to the batch endpoint's invocation URL (``.../jobs``) with the body the
  azure-ai-ml SDK itself sends from ``batch_endpoints.invoke``::

      {"properties": {"inputData": {"run_id": {"jobInputType": "Literal", "value": ...},
                                    "partitions": {"jobInputType": "UriFolder", "uri": "azureml://datastores/..."},
                                    "model_pack": {...},
                                    "model_sha256": {"jobInputType": "Literal", "value": ...}},
                      "outputData": {"predictions": {"jobOutputType": "UriFolder", "uri": ...}}}}

  with a token for ``https://ml.azure.com/.default``, the ``azureml-model-deployment`` header when a
  deployment is named and one ``repeatability_request-id`` for all tries; the response's ``name`` is the job.

Both retry with exponential backoff (honouring ``Retry-After``) and raise :class:`SubmissionError` at once on
any other 4xx. The batch endpoint, whose tries all carry one repeatability id, retries 408/429/5xx, timeouts
and connection errors. The published pipeline has no idempotency key: a try that may have reached it (a read
timeout, a dropped connection, 408/500/502/504) could have started a run, so a second one would start another
run for the same slot. It retries only what was surely not processed — a connection never made and 429/503 —
and reports the rest at once. The token is never logged nor put in an error.

A submitted run is owned by its job; the timer asks the job's state (:meth:`job_state`, GET, retried like the
batch endpoint's POST) to fail a run whose job failed or was cancelled (``fleetscore.runs.recovery``):

* v1: the pipeline run at ``<pipelines base>/PipelineRuns/<run id>`` on the published pipeline's host (the
  path azureml-pipeline-core's AE3P client reads, ``_AevaPipelineRunProvider.get_status``), the base being
  ``AML_PIPELINE_ENDPOINT`` up to its workspace; the reply's ``Status.StatusCode`` is NotStarted, Running,
  Failed, Finished or Canceled (older services: "0".."4") and ``Status.StatusDetail`` the service's message.
* v2: the job resource on ARM, ``GET https://management.azure.com/subscriptions/<AML_SUBSCRIPTION_ID>/
  resourceGroups/<AML_RESOURCE_GROUP>/providers/Microsoft.MachineLearningServices/workspaces/<AML_WORKSPACE>/
  jobs/<job name>?api-version=2024-04-01`` (what azure-ai-ml's ``jobs.get`` calls); ``properties.status`` is one of
  the JobStatus values (Completed, Failed, Canceled end it). The resource carries no error text: the message
  is the status and the job's Studio link (``properties.services.Studio.endpoint``).
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import requests
import urllib3

from fleetscore.backends.base import JobState, Submission, SubmissionError, SubmitRequest
from scoring_job.pipeline_v2 import datastore_uri  # the standard library alone: the Azure ML SDK stays unloaded

log = logging.getLogger("fleetscore.backends.aml")

MANAGEMENT_SCOPE = "https://management.azure.com/.default"
ML_SCOPE = "https://ml.azure.com/.default"
DEPLOYMENT_HEADER = "azureml-model-deployment"
REPEATABILITY_HEADER = "repeatability_request-id"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
NOT_PROCESSED_STATUSES = frozenset({429, 503})
"""What an endpoint answers when it did not take the request on (throttled, unavailable): safe to resend."""
MAX_DELAY_SECONDS = 120.0
ARM_URL = "https://management.azure.com"
ARM_JOBS_API_VERSION = "2024-04-01"
V1_STATUS_CODES = {"0": "NotStarted", "1": "Running", "2": "Failed", "3": "Finished", "4": "Canceled"}
"""The AE3P service's older integer status codes (azureml-pipeline-core `_AevaPipelineRunProvider.get_status`)."""
V1_ENDED, V2_ENDED = frozenset({"Finished", "Failed", "Canceled"}), frozenset({"Completed", "Failed", "Canceled"})
FAILED_STATES = frozenset({"Failed", "Canceled"})
_PIPELINES_WORKSPACE = re.compile(
    r"^(https?://[^/]+/pipelines/v1\.0/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/[^/]+)/", re.IGNORECASE)


@lru_cache(maxsize=1)
def default_credential() -> Any:
    """One ``DefaultAzureCredential`` per process (managed identity on Azure), created on first use."""
    from azure.identity import DefaultAzureCredential  # lazy: a heavy SDK, loaded only for Azure ML

    return DefaultAzureCredential()


def jobs_url(endpoint: str) -> str:
    """The batch endpoint's invocation URL already ends in ``/jobs``; a bare endpoint URL gets it added."""
    url = endpoint.rstrip("/")
    return url if url.endswith("/jobs") else f"{url}/jobs"


def pipeline_body(req: SubmitRequest, experiment: str) -> dict[str, Any]:
    return {
        "ExperimentName": experiment,
        "RunSource": "API",
        "ParameterAssignments": {"run_id": req.run_id, "data_path": req.data_path, "model_version": req.model_version,
                                 **({"model_sha256": req.model_sha256} if req.model_sha256 else {})},
    }


def batch_endpoint_body(req: SubmitRequest, datastore_prefix: str, dtype: str = "float64") -> dict[str, Any]:
    def literal(value: Any) -> dict[str, Any]:
        return {"jobInputType": "Literal", "value": value}

    def folder(path: str) -> dict[str, Any]:
        return {"jobInputType": "UriFolder", "uri": datastore_uri(datastore_prefix, path)}

    return {"properties": {
        "inputData": {
            "run_id": literal(req.run_id),
            "dtype": literal(dtype),
            "partitions": folder(req.data_path),
            "model_pack": folder(req.model_pack_path),
            **({"model_sha256": literal(req.model_sha256)} if req.model_sha256 else {}),
        },
        "outputData": {
            "predictions": {"jobOutputType": "UriFolder", "uri": datastore_uri(datastore_prefix, req.output_path)},
        },
    }}


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _never_sent(exc: requests.RequestException) -> bool:
    """The request cannot have reached the endpoint: the connection was never made (refused, name resolution,
    connect timeout). A read timeout or a connection dropped mid-exchange may follow a request it took on."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError) or isinstance(exc, requests.exceptions.SSLError):
        return False
    cause = exc.args[0] if exc.args else None
    return isinstance(getattr(cause, "reason", cause), urllib3.exceptions.NewConnectionError)


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


@dataclass(frozen=True)
class _RetryableFailure:
    """A try worth repeating: its HTTP status (None: no reply), its scrubbed text, what to log (`HTTP 503`,
    `ConnectTimeout`) and the endpoint's Retry-After in seconds, if any."""

    status: int | None
    text: str
    what: str
    retry_after: float | None = None


def post_with_retries(
    url: str,
    body: dict[str, Any],
    *,
    credential: Any,
    scope: str,
    headers: dict[str, str] | None = None,
    session: requests.Session | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    idempotent: bool = True,
) -> dict[str, Any]:
    """POST ``body`` as JSON with a bearer token for ``scope``; retry transient failures; return the JSON reply.

    ``idempotent=False`` (no idempotency key: resending may do the work twice) retries only a request that was
    surely not processed (:func:`_never_sent`, :data:`NOT_PROCESSED_STATUSES`) and raises on anything else.
    """
    if not url:
        raise SubmissionError("no endpoint URL configured")
    token = credential.get_token(scope).token
    all_headers = {"Content-Type": "application/json", **(headers or {}), "Authorization": f"Bearer {token}"}
    return _with_retries(session, "POST", url, _SUBMIT, token=token, retries=retries, backoff=backoff,
                         sleep=sleep, idempotent=idempotent, json=body, headers=all_headers, timeout=timeout)


@dataclass(frozen=True)
class _Purpose:
    """What a request is for, in its log lines and errors."""

    log: str
    refused: str
    not_json: str
    exhausted: str
    """Formatted with `tries`."""
    refused_level: int = logging.ERROR


_SUBMIT = _Purpose("submit to", "the endpoint refused the job", "the endpoint's reply is not JSON",
                   "the endpoint did not accept the job after {tries} tries")
_STATE = _Purpose("job state from", "Azure ML did not give the job's state", "the job state reply is not JSON",
                  "no job state after {tries} tries", refused_level=logging.WARNING)


def _with_retries(session: requests.Session | None, method: str, url: str, purpose: _Purpose, *, token: str,
                  retries: int, backoff: float, sleep: Callable[[float], None], idempotent: bool,
                  **kwargs: Any) -> dict[str, Any]:
    """``method`` ``url`` (``kwargs`` for ``requests``) up to ``retries + 1`` times, with backoff between tries
    worth repeating (:func:`_try`); the JSON reply, else :class:`SubmissionError`."""
    http = session or requests.Session()
    failure = _RetryableFailure(status=None, text="", what="")
    try:
        for attempt in range(retries + 1):
            outcome = _try(http, method, url, purpose, token=token, idempotent=idempotent, **kwargs)
            if not isinstance(outcome, _RetryableFailure):
                return outcome
            failure = outcome
            log.warning("%s %s: %s (try %d of %d)", purpose.log, url, failure.what, attempt + 1, retries + 1)
            if attempt < retries:
                sleep(_delay_seconds(backoff, attempt, failure.retry_after))
    finally:
        if session is None:
            http.close()
    raise SubmissionError(purpose.exhausted.format(tries=retries + 1), status=failure.status, text=failure.text)


def _try(http: requests.Session, method: str, url: str, purpose: _Purpose, *, token: str, idempotent: bool,
         **kwargs: Any) -> dict[str, Any] | _RetryableFailure:
    """One try: the JSON reply, or a failure worth another try; raises SubmissionError on any other."""
    try:
        response = http.request(method, url, **kwargs)
    except (requests.Timeout, requests.ConnectionError) as exc:
        text = f"{type(exc).__name__}: {_scrub(str(exc), token)}"
        if not idempotent and not _never_sent(exc):
            log.error("%s %s: %s; not retried, the endpoint may have started the job", purpose.log, url,
                      type(exc).__name__)
            raise SubmissionError("no reply from the endpoint, which may have started the job; not retried "
                                  "(a second try could start it twice)", status=None, text=text) from None
        return _RetryableFailure(status=None, text=text, what=type(exc).__name__)
    return _read_reply(url, response, purpose, token=token, idempotent=idempotent)


def _read_reply(url: str, response: requests.Response, purpose: _Purpose, *, token: str,
                idempotent: bool) -> dict[str, Any] | _RetryableFailure:
    """A reply's JSON if it is a success, a failure worth another try, or SubmissionError."""
    status, text = response.status_code, _scrub(response.text or "", token)
    if 200 <= status < 300:
        try:
            return response.json()
        except ValueError:
            raise SubmissionError(purpose.not_json, status=status, text=text) from None
    if status not in RETRY_STATUSES:
        log.log(purpose.refused_level, "%s %s refused: HTTP %d", purpose.log, url, status)
        raise SubmissionError(purpose.refused, status=status, text=text)
    if not idempotent and status not in NOT_PROCESSED_STATUSES:
        log.error("%s %s: HTTP %d; not retried, the endpoint may have started the job", purpose.log, url, status)
        raise SubmissionError("the endpoint failed and may have started the job; not retried (a second "
                              "try could start it twice)", status=status, text=text)
    return _RetryableFailure(status=status, text=text, what=f"HTTP {status}", retry_after=_retry_after(response))


def _delay_seconds(backoff: float, attempt: int, retry_after: float | None) -> float:
    """Seconds before the try after `attempt` (0-based): exponential backoff, at least the endpoint's
    Retry-After, at most MAX_DELAY_SECONDS."""
    delay = backoff * (2**attempt)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, MAX_DELAY_SECONDS)


def submit_pipeline(
    req: SubmitRequest,
    settings: Any,
    credential: Any = None,
    session: requests.Session | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Start the published v1 pipeline for ``req``; return the pipeline run id.

    The REST call has no idempotency key, so only tries the endpoint surely did not process are retried (see
    :func:`post_with_retries`, ``idempotent=False``): one slot never starts two pipeline runs."""
    if not settings.aml_pipeline_endpoint:
        raise SubmissionError("AML_PIPELINE_ENDPOINT is not set")
    reply = post_with_retries(
        settings.aml_pipeline_endpoint, pipeline_body(req, settings.aml_experiment),
        credential=credential or default_credential(), scope=MANAGEMENT_SCOPE, session=session, retries=retries,
        backoff=backoff, timeout=settings.aml_submit_timeout_seconds, sleep=sleep, idempotent=False,
    )
    run_id = reply.get("Id") or reply.get("id")
    if not run_id:
        raise SubmissionError("the pipeline endpoint's reply has no Id", status=200, text=str(reply)[:500])
    log.info("run %s submitted to the published pipeline as %s", req.run_id, run_id)
    return str(run_id)


def submit_batch_endpoint(
    req: SubmitRequest,
    settings: Any,
    credential: Any = None,
    session: requests.Session | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Start a job of the batch endpoint's pipeline component deployment for ``req``; return the job name."""
    if not settings.aml_batch_endpoint:
        raise SubmissionError("AML_BATCH_ENDPOINT is not set")
    headers = {REPEATABILITY_HEADER: str(uuid.uuid4())}
    if settings.aml_batch_deployment:
        headers[DEPLOYMENT_HEADER] = settings.aml_batch_deployment
    reply = post_with_retries(
        jobs_url(settings.aml_batch_endpoint),
        batch_endpoint_body(req, settings.aml_datastore, settings.scoring_dtype),
        credential=credential or default_credential(), scope=ML_SCOPE, headers=headers, session=session,
        retries=retries, backoff=backoff, timeout=settings.aml_submit_timeout_seconds, sleep=sleep,
    )
    job = reply.get("name") or reply.get("id") or reply.get("Id")
    if not job:
        raise SubmissionError("the batch endpoint's reply has no job name", status=200, text=str(reply)[:500])
    log.info("run %s submitted to the batch endpoint as job %s", req.run_id, job)
    return str(job)


def pipeline_run_url(endpoint: str | None, pipeline_run_id: str) -> str:
    """The v1 pipeline run's status URL on the published pipeline endpoint's host and workspace."""
    found = _PIPELINES_WORKSPACE.match(endpoint or "")
    if not found:
        raise SubmissionError("AML_PIPELINE_ENDPOINT is not a .../pipelines/v1.0/subscriptions/.../workspaces/<ws>/"
                              "... URL: the pipeline run's state cannot be asked")
    return f"{found.group(1)}/PipelineRuns/{urllib.parse.quote(pipeline_run_id, safe='')}"


def batch_job_url(settings: Any, job: str, arm_url: str = ARM_URL) -> str:
    """The v2 job's ARM resource URL (without the api-version)."""
    scope = (settings.aml_subscription_id, settings.aml_resource_group, settings.aml_workspace)
    if not all(scope):
        raise SubmissionError("AML_SUBSCRIPTION_ID, AML_RESOURCE_GROUP and AML_WORKSPACE must be set for the timer "
                              "to ask Azure ML for a job's state")
    sub, rg, ws = (urllib.parse.quote(str(part), safe="") for part in scope)
    return (f"{arm_url.rstrip('/')}/subscriptions/{sub}/resourceGroups/{rg}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{ws}/jobs/{urllib.parse.quote(job, safe='')}")


def pipeline_run_state(reply: dict[str, Any]) -> JobState:
    """A v1 PipelineRunEntity reply → its state (`Status.StatusCode`, `Status.StatusDetail`)."""
    status = reply.get("Status") or {}
    code = str(status.get("StatusCode") or "NotStarted")
    code = V1_STATUS_CODES.get(code, code)
    return JobState(code, ended=code in V1_ENDED, failed=code in FAILED_STATES,
                    message=str(status.get("StatusDetail") or ""))


def batch_job_state(reply: dict[str, Any]) -> JobState:
    """A v2 JobBase resource → its state (`properties.status`; the Studio link as the message)."""
    props = reply.get("properties") or {}
    status = str(props.get("status") or "Unknown")
    studio = ((props.get("services") or {}).get("Studio") or {}).get("endpoint")
    return JobState(status, ended=status in V2_ENDED, failed=status in FAILED_STATES,
                    message=f"see {studio}" if studio and status in FAILED_STATES else "")


def get_with_retries(url: str, *, credential: Any, scope: str, params: dict[str, str] | None = None,
                     session: requests.Session | None = None, retries: int = 3, backoff: float = 1.0,
                     timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """GET ``url`` with a bearer token for ``scope``; retry 408/429/5xx, timeouts and connection errors (a GET
    changes nothing); raise :class:`SubmissionError` on any other reply (``status`` 404: not found)."""
    token = credential.get_token(scope).token
    headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
    return _with_retries(session, "GET", url, _STATE, token=token, retries=retries, backoff=backoff, sleep=sleep,
                         idempotent=True, params=params, headers=headers, timeout=timeout)


class _RestBackend:
    """An Azure ML job started over REST: no feed (the job takes the run whole), nothing to cancel in this
    process; the prediction files reach the blob trigger. `job_state` asks the service how the job is doing."""

    in_process = False

    def __init__(self, settings: Any, credential: Any = None, *, arm_url: str = ARM_URL,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.credential = credential
        self.arm_url = arm_url
        self.sleep = sleep

    def _get(self, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return get_with_retries(url, credential=self.credential or default_credential(), scope=MANAGEMENT_SCOPE,
                                params=params, timeout=self.settings.aml_submit_timeout_seconds, sleep=self.sleep)

    def open_feed(self, req: SubmitRequest) -> None:
        return None

    def cancel(self) -> None:
        return None


class AmlPipelineBackend(_RestBackend):
    """``SCORING_BACKEND=aml-pipeline``."""

    def submit(self, req: SubmitRequest) -> Submission:
        return Submission(submit_pipeline(req, self.settings, self.credential))

    def job_state(self, backend_run_id: str) -> JobState:
        return pipeline_run_state(self._get(pipeline_run_url(self.settings.aml_pipeline_endpoint, backend_run_id)))


class AmlBatchEndpointBackend(_RestBackend):
    """``SCORING_BACKEND=aml-batch-endpoint``."""

    def submit(self, req: SubmitRequest) -> Submission:
        return Submission(submit_batch_endpoint(req, self.settings, self.credential))

    def job_state(self, backend_run_id: str) -> JobState:
        url = batch_job_url(self.settings, backend_run_id, self.arm_url)
        return batch_job_state(self._get(url, {"api-version": ARM_JOBS_API_VERSION}))


def aml_backend(settings: Any, credential: Any = None, **kwargs: Any) -> AmlPipelineBackend | AmlBatchEndpointBackend:
    """The Azure ML backend that ``SCORING_BACKEND`` names (`kwargs`: `arm_url`, `sleep`)."""
    if settings.scoring_backend == "aml-pipeline":
        return AmlPipelineBackend(settings, credential, **kwargs)
    if settings.scoring_backend == "aml-batch-endpoint":
        return AmlBatchEndpointBackend(settings, credential, **kwargs)
    raise ValueError(f"not an Azure ML backend: {settings.scoring_backend!r}")
