"""Azure ML SDK v1 (azureml-core, azureml-pipeline-*): the published pipeline with a ParallelRunStep.

SDK v1 reached end of support on 2026-06-30; this stays for teams that run it already (the supported path is
:mod:`scoring_job.pipeline_v2`). The timer starts the published pipeline over REST with three string
``PipelineParameter``s: ``run_id``, ``data_path`` (``data/<run_id>``), ``model_version`` and ``model_sha256`` (the
SHA-256 of the pack's manifest.json that the run pinned; ``score.py`` refuses any other manifest).

SDK v1 can bind neither a step's input dataset nor its output folder to a *string* pipeline parameter (an
output destination only knows the ``{run-id}`` and ``{output-name}`` placeholders), so the pipeline has
three steps on the same cluster:

1. ``stage-inputs`` (PythonScriptStep, this file): copies ``data/<data_path>/*.parquet`` and
   ``models/<model_version>/`` from the mounted containers into two step outputs;
2. ``score-partitions`` (ParallelRunStep): ``score.py`` over those partitions (``mini_batch_size`` partitions
   per call), the model pack as a side input, ``output_action="summary_only"`` since the script writes its
   own files into the step output that the runner passes as ``--output``;
3. ``copy-predictions`` (PythonScriptStep, this file): copies the prediction files into
   ``predictions/<run_id>/`` of the Functions app's storage account, where the blob trigger indexes them.

``build_v1_definition`` builds everything that needs no workspace (environment, ParallelRunConfig, pipeline
parameters, step arguments, the cluster's provisioning configuration); ``publish_v1`` creates the datasets,
steps and cluster in the workspace and publishes; ``python -m fleetscore.cli.aml_v1_main describe|publish`` runs
them with the project's settings. The SDK is imported inside functions only, so the cluster runs this file's
``stage-inputs`` / ``copy-predictions`` commands with the standard library (and its sibling ``pipeline_v2``,
whose constants it shares) alone.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from .contract import JOB_CONTAINERS
    from .pipeline_v2 import ENTRY_SCRIPT, PYTHON_VERSION, SCORING_DIR, cluster_role_commands, requirements
except ImportError:  # on the cluster this file runs as a script in the scoring_job folder's snapshot
    from contract import JOB_CONTAINERS
    from pipeline_v2 import ENTRY_SCRIPT, PYTHON_VERSION, SCORING_DIR, cluster_role_commands, requirements

THIS_SCRIPT = Path(__file__).name
PARAMETERS = {"run_id": "unset", "data_path": "data/unset", "model_version": "unset", "model_sha256": "unset"}
"""The published pipeline's parameters and defaults (a default ``model_sha256`` is refused by ``score.py``)."""
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,127}$")
CLUSTER_IDENTITY_TYPE = "SystemAssigned"
"""``AmlCompute.provisioning_configuration(identity_type=...)``: the cluster's managed identity."""
INSTALL_HINT = ("the Azure ML SDK v1 is not installed: pip install '.[aml-v1]' (azureml-core, "
                "azureml-pipeline-core, azureml-pipeline-steps) in a separate venv, e.g. `make aml-v1`")


def _sdk() -> None:
    try:
        import azureml.core  # noqa: F401
        import azureml.pipeline.steps  # noqa: F401
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


# --------------------------------------------------------------------------- offline definition


def build_environment(settings: Any) -> Any:
    from azureml.core import Environment
    from azureml.core.conda_dependencies import CondaDependencies

    env = Environment(name="fleetscore-scoring")
    env.docker.base_image = settings.aml_image
    env.python.conda_dependencies = CondaDependencies.create(
        python_version=PYTHON_VERSION, pip_packages=requirements(), pin_sdk_version=False)
    return env


def build_v1_definition(settings: Any) -> dict[str, Any]:
    """Everything SDK v1 builds without a workspace. Dataset-bound arguments are named ``<...>`` placeholders
    here; ``publish_v1`` puts the workspace's datasets in their place."""
    _sdk()
    from azureml.core.compute import AmlCompute
    from azureml.pipeline.core import PipelineParameter
    from azureml.pipeline.steps import ParallelRunConfig

    environment = build_environment(settings)
    parameters = {name: PipelineParameter(name=name, default_value=value) for name, value in PARAMETERS.items()}
    parallel_run_config = ParallelRunConfig(
        environment=environment,
        entry_script=ENTRY_SCRIPT,
        source_directory=str(SCORING_DIR),
        mini_batch_size=str(settings.aml_mini_batch_size),
        error_threshold=settings.aml_error_threshold,
        allowed_failed_count=settings.aml_error_threshold,
        output_action="summary_only",
        compute_target=settings.aml_compute,
        node_count=settings.aml_node_count,
        process_count_per_node=settings.aml_process_count_per_node,
        run_invocation_timeout=settings.aml_run_timeout_seconds,
        run_max_try=settings.aml_max_retries,
        logging_level="INFO",
        description="fleetscore: score a run's partitions with the fleet's model pack",
    )
    provisioning = AmlCompute.provisioning_configuration(
        vm_size=settings.aml_vm_size,
        vm_priority="lowpriority" if settings.aml_low_priority else "dedicated",
        min_nodes=0,
        max_nodes=settings.aml_max_nodes,
        idle_seconds_before_scaledown=300,
        identity_type=CLUSTER_IDENTITY_TYPE,  # the datastores are credential-less: jobs mount them as the cluster
    )
    return {
        "environment": environment,
        "parallel_run_config": parallel_run_config,
        "pipeline_parameters": parameters,
        "provisioning_configuration": provisioning,
        "stage_arguments": ["stage-inputs", "--data_root", "<data container mount>", "--data_path",
                            parameters["data_path"], "--models_root", "<models container mount>",
                            "--model_version", parameters["model_version"], "--partitions_out",
                            "<partitions output>", "--model_pack_out", "<model_pack output>"],
        "score_arguments": ["--model_pack", "<model_pack side input>", "--model_pack_sha256",
                            parameters["model_sha256"], "--run_id", parameters["run_id"], "--dtype",
                            settings.scoring_dtype],
        "copy_arguments": ["copy-predictions", "--scored", "<score-partitions output>", "--predictions_root",
                           "<predictions container mount>", "--run_id", parameters["run_id"]],
        "datastores": {c: f"{settings.aml_datastore}_{c}" for c in JOB_CONTAINERS},
        "compute_name": settings.aml_compute,
        "pipeline_name": settings.aml_pipeline_name,
        "role_assignments": cluster_role_commands(settings),
    }


def build_v1_score_step_offline(definition: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The ParallelRunStep over placeholder URL datasets (no workspace): validates the arguments against the
    SDK's reserved names and returns the step with the full argument list the runner gives ``score.py``."""
    from azureml.core import Dataset
    from azureml.data import OutputFileDatasetConfig
    from azureml.pipeline.steps import ParallelRunStep

    base = "https://placeholder.blob.core.windows.net"
    partitions = Dataset.File.from_files(path=f"{base}/data/run/", validate=False).as_named_input("partitions")
    pack = Dataset.File.from_files(path=f"{base}/models/version/", validate=False) \
        .as_named_input("model_pack").as_mount()
    scored = OutputFileDatasetConfig(name="scored").as_mount()
    arguments = [pack if a == "<model_pack side input>" else a for a in definition["score_arguments"]]
    step = ParallelRunStep(name="score-partitions", parallel_run_config=definition["parallel_run_config"],
                           inputs=[partitions], side_inputs=[pack], output=scored, arguments=arguments,
                           allow_reuse=False)
    return step, list(step._arguments)  # the base PythonScriptStep keeps the full runner argument list


def _arg(value: Any) -> Any:
    if hasattr(value, "default_value") and hasattr(value, "name"):
        return f"${{{value.name}}}"
    if isinstance(value, (str, int, float, bool)):
        return value
    return f"<{type(value).__name__}:{getattr(value, 'name', '?')}>"


def describe_v1(definition: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able view of :func:`build_v1_definition` (for ``--dry-run`` and tests)."""
    prc = definition["parallel_run_config"]
    runner_arguments: list[Any] | str
    if (Path(prc.source_directory) / prc.entry_script).is_file():
        runner_arguments = [_arg(a) for a in build_v1_score_step_offline(definition)[1]]
    else:
        runner_arguments = f"(build the step once {prc.entry_script} exists)"
    from azureml.core.compute import AmlCompute

    prov = definition["provisioning_configuration"]
    env = definition["environment"]
    payload = AmlCompute._build_create_payload(prov, "<location>", "<subscription>")  # the SDK's own request body
    return {
        "parallel_run_config": {
            "entry_script": prc.entry_script, "source_directory": prc.source_directory,
            "mini_batch_size": prc.mini_batch_size, "error_threshold": prc.error_threshold,
            "allowed_failed_count": prc.allowed_failed_count, "output_action": prc.output_action,
            "compute_target": prc.compute_target, "node_count": prc.node_count,
            "process_count_per_node": prc.process_count_per_node,
            "run_invocation_timeout": prc.run_invocation_timeout, "run_max_try": prc.run_max_try,
            "logging_level": prc.logging_level,
            "environment": {"name": env.name, "base_image": env.docker.base_image,
                            "pip_packages": list(env.python.conda_dependencies.pip_packages),
                            "python": PYTHON_VERSION},
        },
        "pipeline_parameters": {n: p.default_value for n, p in definition["pipeline_parameters"].items()},
        "steps": {
            "stage-inputs": {"script": THIS_SCRIPT, "arguments": [_arg(a) for a in definition["stage_arguments"]]},
            "score-partitions": {"type": "ParallelRunStep",
                                 "arguments": [_arg(a) for a in definition["score_arguments"]]},
            "copy-predictions": {"script": THIS_SCRIPT, "arguments": [_arg(a) for a in definition["copy_arguments"]]},
        },
        "provisioning_configuration": {
            "name": definition["compute_name"], "vm_size": prov.vm_size, "vm_priority": prov.vm_priority,
            "min_nodes": prov.scale_settings.minimum_node_count, "max_nodes": prov.scale_settings.maximum_node_count,
            "idle_seconds_before_scaledown": prov.scale_settings.idle_seconds_before_scaledown,
            "identity_type": prov.identity_type, "create_payload_identity": payload.get("identity"),
        },
        "role_assignments": definition["role_assignments"],
        "datastores": definition["datastores"],
        "pipeline_name": definition["pipeline_name"],
        "runner_arguments": runner_arguments,
        "rest_body": {"ExperimentName": "<AML_EXPERIMENT>", "RunSource": "API",
                      "ParameterAssignments": {n: f"<{n}>" for n in PARAMETERS}},
    }


# --------------------------------------------------------------------------- publishing (needs a workspace)


def publish_v1(settings: Any, log: Any = print) -> dict[str, str]:
    """Create the cluster, datastores and datasets in the workspace, publish the pipeline behind a
    PipelineEndpoint (a stable URL across versions) and return the REST endpoints."""
    definition = build_v1_definition(settings)
    ws = _workspace(settings)
    compute = _compute_cluster(ws, settings, definition["provisioning_configuration"], log)
    stores = _datastores(ws, settings, definition["datastores"], log)
    return _publish(ws, settings, _pipeline_steps(definition, stores, compute))


def _workspace(settings: Any) -> Any:
    from azureml.core import Workspace  # the SDK: lazy, so the cluster-side steps need the standard library alone

    missing = [n for n, v in (("AML_SUBSCRIPTION_ID", settings.aml_subscription_id),
                              ("AML_RESOURCE_GROUP", settings.aml_resource_group),
                              ("AML_WORKSPACE", settings.aml_workspace)) if not v]
    if missing:
        raise ValueError(f"set {', '.join(missing)} to publish")
    return Workspace(subscription_id=settings.aml_subscription_id, resource_group=settings.aml_resource_group,
                     workspace_name=settings.aml_workspace)


def _compute_cluster(ws: Any, settings: Any, provisioning: Any, log: Any) -> Any:
    """The workspace's compute cluster ``settings.aml_compute``, created if missing."""
    from azureml.core.compute import ComputeTarget  # the SDK: lazy (see _workspace)
    from azureml.core.compute_target import ComputeTargetException

    try:
        compute = ComputeTarget(workspace=ws, name=settings.aml_compute)
        log(f"compute cluster {settings.aml_compute} exists")
        if getattr(compute, "identity_type", None) is None:  # SDK v1 cannot add an identity to a cluster
            log(f"WARNING: {settings.aml_compute} has no managed identity and cannot read the credential-less "
                f"datastores: az ml compute update -n {settings.aml_compute} --identity-type system_assigned")
    except ComputeTargetException:
        log(f"creating compute cluster {settings.aml_compute} (system-assigned identity)")
        compute = ComputeTarget.create(ws, settings.aml_compute, provisioning)
        compute.wait_for_completion(show_output=False)
    return compute


def _datastores(ws: Any, settings: Any, names: dict[str, str], log: Any) -> dict[str, Any]:
    """{container: datastore} for :data:`JOB_CONTAINERS`, registered on ``settings.aml_storage_account`` when
    missing."""
    from azureml.core import Datastore  # the SDK: lazy (see _workspace)

    stores = {}
    for container, name in names.items():
        try:
            stores[container] = Datastore.get(ws, name)
        except Exception:
            if not settings.aml_storage_account:
                raise ValueError(f"datastore {name} is missing; set AML_STORAGE_ACCOUNT to register it") from None
            log(f"registering datastore {name} → {settings.aml_storage_account}/{container}")
            stores[container] = Datastore.register_azure_blob_container(
                workspace=ws, datastore_name=name, container_name=container,
                account_name=settings.aml_storage_account)
    return stores


def _pipeline_steps(definition: dict[str, Any], stores: dict[str, Any], compute: Any) -> list[Any]:
    """The three steps (module docstring) on the workspace's datastores: stage-inputs, score-partitions,
    copy-predictions."""
    from azureml.core import Dataset  # the SDK: lazy (see _workspace)
    from azureml.core.runconfig import RunConfiguration
    from azureml.data import OutputFileDatasetConfig
    from azureml.pipeline.steps import ParallelRunStep, PythonScriptStep

    params = definition["pipeline_parameters"]
    data_root = Dataset.File.from_files(path=(stores["data"], "/"), validate=False) \
        .as_named_input("data_root").as_mount()
    models_root = Dataset.File.from_files(path=(stores["models"], "/"), validate=False) \
        .as_named_input("models_root").as_mount()
    partitions = OutputFileDatasetConfig(name="partitions")
    model_pack = OutputFileDatasetConfig(name="model_pack")
    run_config = RunConfiguration()
    run_config.environment = definition["environment"]
    stage = PythonScriptStep(
        name="stage-inputs", script_name=THIS_SCRIPT, source_directory=str(SCORING_DIR),
        arguments=["stage-inputs", "--data_root", data_root, "--data_path", params["data_path"],
                   "--models_root", models_root, "--model_version", params["model_version"],
                   "--partitions_out", partitions, "--model_pack_out", model_pack],
        inputs=[data_root, models_root], outputs=[partitions, model_pack],
        compute_target=compute, runconfig=run_config, allow_reuse=False)

    partitions_in = partitions.as_input(name="partitions")
    pack_in = model_pack.as_input(name="model_pack").as_mount()
    scored = OutputFileDatasetConfig(name="scored").as_mount()
    score_args = [pack_in if a == "<model_pack side input>" else a for a in definition["score_arguments"]]
    score = ParallelRunStep(
        name="score-partitions", parallel_run_config=definition["parallel_run_config"],
        inputs=[partitions_in], side_inputs=[pack_in], output=scored, arguments=score_args, allow_reuse=False)

    scored_in = scored.as_input(name="scored").as_mount()
    predictions_root = OutputFileDatasetConfig(
        name="predictions_root", destination=(stores["predictions"], "/")).as_mount()
    copy = PythonScriptStep(
        name="copy-predictions", script_name=THIS_SCRIPT, source_directory=str(SCORING_DIR),
        arguments=["copy-predictions", "--scored", scored_in, "--predictions_root", predictions_root,
                   "--run_id", params["run_id"]],
        inputs=[scored_in], outputs=[predictions_root],
        compute_target=compute, runconfig=run_config, allow_reuse=False)
    return [stage, score, copy]


def _publish(ws: Any, settings: Any, steps: list[Any]) -> dict[str, str]:
    """Validate and publish the pipeline, make it the PipelineEndpoint's default; the REST endpoints."""
    from azureml.pipeline.core import Pipeline, PipelineEndpoint  # the SDK: lazy (see _workspace)

    pipeline = Pipeline(workspace=ws, steps=steps)
    pipeline.validate()
    published = pipeline.publish(name=settings.aml_pipeline_name, description="fleetscore scoring (SDK v1)",
                                 continue_on_step_failure=False)
    try:
        endpoint = PipelineEndpoint.get(workspace=ws, name=settings.aml_pipeline_name)
        endpoint.add_default(published)
    except Exception:
        endpoint = PipelineEndpoint.publish(workspace=ws, name=settings.aml_pipeline_name, pipeline=published,
                                            description="fleetscore scoring (SDK v1)")
    return {"published_pipeline_id": published.id, "published_pipeline_endpoint": published.endpoint,
            "pipeline_endpoint": endpoint.endpoint, "role_assignments": cluster_role_commands(settings)}


# --------------------------------------------------------------------------- cluster-side steps (stdlib only)


def _safe(name: str, what: str) -> str:
    if not SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"unsafe {what}: {name!r}")
    return name


def _relative(path: str, container: str) -> str:
    """``data/<run_id>`` → ``<run_id>`` (the path inside the container's mount)."""
    head, _, rest = path.strip("/").partition("/")
    if head != container or not rest:
        raise ValueError(f"expected {container}/<name>, got {path!r}")
    return "/".join(_safe(part, "path segment") for part in rest.split("/"))


def stage_inputs(data_root: str, data_path: str, models_root: str, model_version: str,
                 partitions_out: str, model_pack_out: str) -> tuple[int, int]:
    """Copy the run's partitions and the model pack out of the container mounts into the step outputs."""
    src = Path(data_root) / _relative(data_path, "data")
    files = sorted(p for p in src.glob("*.parquet") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no partitions under {data_path}")
    out = Path(partitions_out)
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, out / path.name)
    pack_src = Path(models_root) / _safe(model_version, "model version")
    if not (pack_src / "manifest.json").is_file():
        raise FileNotFoundError(f"no model pack models/{model_version}/manifest.json")
    pack_files = [p for p in pack_src.rglob("*") if p.is_file()]
    for path in pack_files:
        target = Path(model_pack_out) / path.relative_to(pack_src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return len(files), len(pack_files)


def copy_predictions(scored: str, predictions_root: str, run_id: str) -> int:
    """Copy the prediction files into ``predictions/<run_id>/`` (the blob trigger indexes each one)."""
    target = Path(predictions_root) / _safe(run_id, "run id")
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in Path(scored).glob("*.parquet") if p.is_file())
    for path in files:
        shutil.copyfile(path, target / path.name)
    return len(files)


def main(argv: list[str] | None = None) -> int:
    """The cluster-side steps. Describing and publishing need the project's settings:
    ``python -m fleetscore.cli.aml_v1_main describe|publish`` (what ``fleetscore aml publish --sdk v1`` runs)."""
    parser = argparse.ArgumentParser(prog="pipeline_v1.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage-inputs", help="(cluster) copy a run's partitions and model pack")
    for name in ("data_root", "data_path", "models_root", "model_version", "partitions_out", "model_pack_out"):
        stage.add_argument(f"--{name}", required=True)
    copy = sub.add_parser("copy-predictions", help="(cluster) copy predictions to predictions/<run_id>/")
    for name in ("scored", "predictions_root", "run_id"):
        copy.add_argument(f"--{name}", required=True)
    args, _ = parser.parse_known_args(argv)
    if args.command == "stage-inputs":
        n, m = stage_inputs(args.data_root, args.data_path, args.models_root, args.model_version,
                            args.partitions_out, args.model_pack_out)
        print(f"staged {n} partitions and {m} model pack files")
    else:
        print(f"copied {copy_predictions(args.scored, args.predictions_root, args.run_id)} prediction files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
