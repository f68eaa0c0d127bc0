"""Azure ML SDK v2 (azure-ai-ml): the scoring job as a parallel job in a pipeline, deployed under a batch endpoint.

The pipeline has one step, a parallel job (``parallel_run_function``) that runs ``score.py`` over the run's
partitions (``uri_folder``, one Parquet file per mini-batch item), with the model pack as a side input and
the predictions folder as its output. As a pipeline component it is deployed as a
``PipelineComponentBatchDeployment`` under a ``BatchEndpoint``; the timer then invokes the endpoint over REST
(:mod:`fleetscore.backends.aml`) with the run's inputs and ``predictions/<run_id>`` as the output, all on the
workspace datastores ``<AML_DATASTORE>_data``, ``_models`` and ``_predictions`` (one per container of the
Functions app's storage account), so the blob trigger indexes what the cluster writes.

``build_v2_job`` builds everything offline (no workspace, no credentials) and ``to_yaml`` prints it;
``publish_v2`` needs ``pip install .[aml]`` and a login (``DefaultAzureCredential``). The SDK is imported inside
functions only: the module itself needs the standard library alone, so the Functions app imports
``datastore_uri`` from it (:mod:`fleetscore.backends.aml`) and ``pipeline_v1`` shares its constants.
"""

import io
from pathlib import Path
from typing import Any

try:
    from .contract import JOB_CONTAINERS
except ImportError:  # the Azure ML code snapshot: this folder is the working directory, not a package
    from contract import JOB_CONTAINERS

SCORING_DIR = Path(__file__).resolve().parent
ENTRY_SCRIPT = "score.py"
REQUIREMENTS = SCORING_DIR / "requirements.txt"
PYTHON_VERSION = "3.11"
STEP_NAME = "score_partitions"
PROGRAM_ARGUMENTS = (
    "--model_pack ${{inputs.model_pack}} --model_pack_sha256 ${{inputs.model_sha256}} "
    "--output ${{outputs.predictions}} --run_id ${{inputs.run_id}} --dtype ${{inputs.dtype}}"
)
INSTALL_HINT = "the Azure ML SDK v2 is not installed: pip install '.[aml]'  (azure-ai-ml)"


def requirements(path: Path = REQUIREMENTS) -> list[str]:
    """The pip lines of ``scoring_job/requirements.txt`` (comments and blanks dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def conda_spec(name: str = "fleetscore-scoring") -> dict[str, Any]:
    """The conda file of the scoring environment: python plus the pip requirements."""
    return {"name": name, "channels": ["conda-forge"],
            "dependencies": [f"python={PYTHON_VERSION}", "pip", {"pip": requirements()}]}


def datastore_uri(datastore_prefix: str, path: str) -> str:
    """``data/<run>`` → ``azureml://datastores/<prefix>_data/paths/<run>/`` (one datastore per container)."""
    container, _, rest = path.strip("/").partition("/")
    if not container:
        raise ValueError(f"not a <container>/<path>: {path!r}")
    rest = f"{rest}/" if rest else ""
    return f"azureml://datastores/{datastore_prefix}_{container}/paths/{rest}"


def _sdk() -> Any:
    try:
        import azure.ai.ml as ml
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return ml


def build_environment(settings: Any) -> Any:
    from azure.ai.ml.entities import Environment

    return Environment(name="fleetscore-scoring", image=settings.aml_image, conda_file=conda_spec(),
                       description="fleetscore scoring job: numpy, pandas, pyarrow, scikit-learn, skops, numba")


def build_parallel_step(settings: Any) -> Any:
    """The parallel job: ``score.py`` over the partitions folder, one partition file per mini-batch item."""
    ml = _sdk()
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.parallel import RunFunction, parallel_run_function

    return parallel_run_function(
        name=STEP_NAME,
        display_name="score a run's partitions",
        description="fleetscore: init() loads the model pack once per worker, run(mini_batch) scores partitions",
        inputs={
            "partitions": ml.Input(type=AssetTypes.URI_FOLDER, description="data/<run_id>/part-*.parquet"),
            "model_pack": ml.Input(type=AssetTypes.URI_FOLDER, description="models/<version>/ (manifest.json)"),
            "model_sha256": ml.Input(type="string", description="SHA-256 of the pack's manifest.json (the run's pin)"),
            "run_id": ml.Input(type="string", description="the schedule slot's run id"),
            "dtype": ml.Input(type="string", default=settings.scoring_dtype, optional=True),
        },
        outputs={"predictions": ml.Output(type=AssetTypes.URI_FOLDER, mode="rw_mount",
                                          description="predictions/<run_id>/part-*.parquet")},
        input_data="${{inputs.partitions}}",
        instance_count=settings.aml_node_count,
        max_concurrency_per_instance=settings.aml_process_count_per_node,
        mini_batch_size=str(settings.aml_mini_batch_size),
        error_threshold=settings.aml_error_threshold,
        mini_batch_error_threshold=settings.aml_error_threshold,
        retry_settings={"max_retries": settings.aml_max_retries, "timeout": settings.aml_run_timeout_seconds},
        logging_level="INFO",
        is_deterministic=False,
        task=RunFunction(code=str(SCORING_DIR), entry_script=ENTRY_SCRIPT, program_arguments=PROGRAM_ARGUMENTS,
                         environment=build_environment(settings)),
    )


def build_pipeline_function(settings: Any) -> Any:
    """The ``@dsl.pipeline`` wrapping the parallel step (its component is what the batch deployment serves)."""
    ml = _sdk()
    from azure.ai.ml import dsl
    from azure.ai.ml.constants import AssetTypes

    step = build_parallel_step(settings)

    @dsl.pipeline(name=settings.aml_pipeline_name.replace("-", "_"), display_name="fleetscore scoring",
                  description="Score one run's partitions with the fleet's model pack", compute=settings.aml_compute)
    def fleetscore_scoring(
        partitions: ml.Input(type=AssetTypes.URI_FOLDER),
        model_pack: ml.Input(type=AssetTypes.URI_FOLDER),
        model_sha256: str,
        run_id: str,
        dtype: str = settings.scoring_dtype,
    ):
        scored = step(partitions=partitions, model_pack=model_pack, model_sha256=model_sha256, run_id=run_id,
                      dtype=dtype)
        return {"predictions": scored.outputs.predictions}

    return fleetscore_scoring


def build_v2_job(settings: Any, run_id: str | None = None, model_version: str | None = None,
                 model_sha256: str | None = None) -> Any:
    """The whole pipeline job, offline. Without a run id the output is bound to ``predictions/${{name}}``."""
    ml = _sdk()
    from azure.ai.ml.constants import AssetTypes

    prefix = settings.aml_datastore
    data_run = run_id or "example-run"
    output_run = run_id or "${{name}}"
    version = model_version or "MODEL_VERSION"
    job = build_pipeline_function(settings)(
        partitions=ml.Input(type=AssetTypes.URI_FOLDER, path=datastore_uri(prefix, f"data/{data_run}")),
        model_pack=ml.Input(type=AssetTypes.URI_FOLDER, path=datastore_uri(prefix, f"models/{version}")),
        model_sha256=model_sha256 or "MODEL_SHA256",
        run_id=data_run,
        dtype=settings.scoring_dtype,
    )
    job.outputs.predictions = ml.Output(type=AssetTypes.URI_FOLDER, mode="rw_mount",
                                        path=datastore_uri(prefix, f"predictions/{output_run}"))
    job.settings.default_compute = settings.aml_compute
    job.settings.continue_on_step_failure = False
    job.experiment_name = settings.aml_experiment
    return job


def to_yaml(job: Any) -> str:
    buf = io.StringIO()
    job.dump(buf)
    return buf.getvalue()


def build_compute(settings: Any) -> Any:
    """The compute cluster (0..AML_MAX_NODES nodes, scale-down after 300 s idle) with a system-assigned managed
    identity: the datastores are credential-less, so the cluster mounts them with that identity."""
    from azure.ai.ml.entities import AmlCompute, IdentityConfiguration

    return AmlCompute(name=settings.aml_compute, size=settings.aml_vm_size, min_instances=0,
                      max_instances=settings.aml_max_nodes, idle_time_before_scale_down=300,
                      tier="low_priority" if settings.aml_low_priority else "dedicated",
                      identity=IdentityConfiguration(type="system_assigned"))


CLUSTER_STORAGE_ROLE = "Storage Blob Data Contributor"
"""What the cluster's identity needs on the storage account: read ``data/`` and ``models/``, write ``predictions/``."""


def cluster_role_commands(settings: Any, principal_id: str | None = None) -> list[str]:
    """The ``az role assignment create`` commands the cluster's system-assigned identity needs (standard library
    only, shared with SDK v1). Without ``principal_id`` the command reads it with ``az ml compute show``."""
    principal = principal_id or (
        f"$(az ml compute show -n {settings.aml_compute} -g {settings.aml_resource_group or '$RG'} "
        f"-w {settings.aml_workspace or '$AML'} --query identity.principal_id -o tsv)")
    account = settings.aml_storage_account or "$ST"
    scope = f"$(az storage account show -n {account} --query id -o tsv)"
    return [f'az role assignment create --assignee-object-id "{principal}" --assignee-principal-type ServicePrincipal '
            f'--role "{CLUSTER_STORAGE_ROLE}" --scope "{scope}"']


def ml_client(settings: Any, credential: Any = None) -> Any:
    ml = _sdk()
    missing = [name for name, value in (("AML_SUBSCRIPTION_ID", settings.aml_subscription_id),
                                        ("AML_RESOURCE_GROUP", settings.aml_resource_group),
                                        ("AML_WORKSPACE", settings.aml_workspace)) if not value]
    if missing:
        raise ValueError(f"set {', '.join(missing)} to publish")
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return ml.MLClient(credential, settings.aml_subscription_id, settings.aml_resource_group, settings.aml_workspace)


def publish_v2(settings: Any, credential: Any = None, log: Any = print) -> dict[str, str]:
    """Create or update the cluster, datastores, batch endpoint and pipeline component deployment."""
    from azure.ai.ml.entities import AzureBlobDatastore, BatchEndpoint, PipelineComponentBatchDeployment

    client = ml_client(settings, credential)
    log(f"compute cluster {settings.aml_compute} ({settings.aml_vm_size}, 0..{settings.aml_max_nodes} nodes, "
        "system-assigned identity)")
    compute = client.compute.begin_create_or_update(build_compute(settings)).result()
    principal_id = getattr(getattr(compute, "identity", None), "principal_id", None)
    if settings.aml_storage_account:
        for container in JOB_CONTAINERS:
            name = f"{settings.aml_datastore}_{container}"
            log(f"datastore {name} → {settings.aml_storage_account}/{container} (identity-based access)")
            client.datastores.create_or_update(AzureBlobDatastore(
                name=name, account_name=settings.aml_storage_account, container_name=container))
    else:
        log("AML_STORAGE_ACCOUNT not set: the datastores must exist already (docs/AZURE.md)")
    component = client.components.create_or_update(build_v2_job(settings).component)
    log(f"pipeline component {component.name}:{component.version}")
    endpoint = client.batch_endpoints.begin_create_or_update(
        BatchEndpoint(name=settings.aml_endpoint_name, description="fleetscore scoring")).result()
    deployment_name = settings.aml_batch_deployment or "fleetscore-v2"
    client.batch_deployments.begin_create_or_update(PipelineComponentBatchDeployment(
        name=deployment_name, endpoint_name=settings.aml_endpoint_name, component=component,
        settings={"default_compute": settings.aml_compute, "continue_on_step_failure": False},
    )).result()
    endpoint = client.batch_endpoints.get(settings.aml_endpoint_name)
    endpoint.defaults.deployment_name = deployment_name
    endpoint = client.batch_endpoints.begin_create_or_update(endpoint).result()
    return {"endpoint": settings.aml_endpoint_name, "deployment": deployment_name,
            "scoring_uri": str(endpoint.scoring_uri), "cluster_principal_id": principal_id or "",
            "role_assignments": cluster_role_commands(settings, principal_id)}
