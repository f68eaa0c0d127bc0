"""The Azure ML definitions, built offline, and the entry script under harnesses that call it like the
v1 (ParallelRunStep) and v2 (parallel job) runners do.

SDK v2 tests need the ``aml`` extra (azure-ai-ml). SDK v1 pins numpy < 2.3.3, so its tests run in this
interpreter when it has azureml-pipeline-steps, else in the ``.venv-aml-v1`` venv (``make aml-v1``) or the
one ``FLEETSCORE_AML_V1_PYTHON`` names; without either they fail (``make test`` builds that venv).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetscore.settings import load_settings
from scoring_job import pipeline_v1, pipeline_v2
from tests.helpers import REPO
from tests.helpers.snapshot import SCORING_DIR, SNAPSHOT_ONLY, copy_snapshot, drive, run_script

OVERRIDES = {"AML_COMPUTE": "score-cpu", "AML_VM_SIZE": "Standard_F8s_v2", "AML_MAX_NODES": "6",
             "AML_NODE_COUNT": "3", "AML_LOW_PRIORITY": "true", "AML_PROCESS_COUNT_PER_NODE": "4",
             "AML_MINI_BATCH_SIZE": "2", "AML_ERROR_THRESHOLD": "1", "AML_MAX_RETRIES": "2",
             "AML_RUN_TIMEOUT_SECONDS": "900", "AML_DATASTORE": "fleet", "SCORING_DTYPE": "float32"}
PREDICTION_COLUMNS = {"device", "sensor", "window_end", "n", "mean", "min", "max", "std", "score", "is_anomaly",
                      "model_version", "run_id"}


@pytest.fixture
def aml_settings(monkeypatch):
    for key, value in OVERRIDES.items():
        monkeypatch.setenv(key, value)
    return load_settings()


# ----------------------------------------------------------------------------------------------------- v2


def test_v2_pipeline_job_offline(aml_settings):
    import azure.ai.ml  # noqa: F401 - the aml extra is part of the dev install
    import yaml

    from scoring_job import pipeline_v2

    job = pipeline_v2.build_v2_job(aml_settings, run_id="20261123T1005Z", model_version="v7", model_sha256="ab" * 32)
    step = job.jobs[pipeline_v2.STEP_NAME]
    assert step.type == "parallel"
    assert step.task.entry_script == "score.py"
    assert Path(step.task.code) == SCORING_DIR
    assert str(step.mini_batch_size) == "2" and step.resources.instance_count == 3
    assert step.max_concurrency_per_instance == 4
    assert step.error_threshold == 1 and step.mini_batch_error_threshold == 1
    assert step.input_data == "${{inputs.partitions}}"
    args = shlex.split(step.task.program_arguments)
    assert args[args.index("--output") + 1] == "${{outputs.predictions}}"
    assert args[args.index("--model_pack") + 1] == "${{inputs.model_pack}}"
    assert args[args.index("--run_id") + 1] == "${{inputs.run_id}}"
    assert args[args.index("--model_pack_sha256") + 1] == "${{inputs.model_sha256}}"
    assert job.outputs.predictions.path == "azureml://datastores/fleet_predictions/paths/20261123T1005Z/"
    assert job.inputs.partitions.path == "azureml://datastores/fleet_data/paths/20261123T1005Z/"
    assert job.inputs.model_pack.path == "azureml://datastores/fleet_models/paths/v7/"

    doc = yaml.safe_load(pipeline_v2.to_yaml(job))
    assert doc["type"] == "pipeline"
    assert doc["settings"]["default_compute"] == "azureml:score-cpu"
    assert doc["inputs"]["run_id"] == "20261123T1005Z" and doc["inputs"]["dtype"] == "float32"
    assert doc["inputs"]["model_sha256"] == "ab" * 32
    parallel = doc["jobs"][pipeline_v2.STEP_NAME]
    assert parallel["retry_settings"] == {"max_retries": 2, "timeout": 900}
    assert parallel["task"]["entry_script"] == "score.py"
    pip = parallel["task"]["environment"]["conda_file"]["dependencies"][-1]["pip"]
    assert pip == pipeline_v2.requirements() and any(p.startswith("pyarrow") for p in pip)
    assert parallel["component"]["inputs"]["run_id"]["type"] == "string"
    assert parallel["component"]["inputs"]["model_sha256"]["type"] == "string"
    assert not parallel["component"]["inputs"]["model_sha256"].get("optional")  # a run without its pin fails
    assert set(job.component.inputs) == {"partitions", "model_pack", "model_sha256", "run_id", "dtype"}
    assert set(job.component.outputs) == {"predictions"}


def test_v2_default_output_is_the_job_name_and_cli_dry_run_prints_yaml(aml_settings):
    import azure.ai.ml  # noqa: F401 - the aml extra is part of the dev install
    import typer
    import yaml
    from typer.testing import CliRunner

    from fleetscore.cli.aml import aml_app

    app = typer.Typer()
    app.add_typer(aml_app, name="aml")
    result = CliRunner().invoke(app, ["aml", "publish", "--sdk", "v2", "--dry-run"])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout[result.stdout.index("compute:"):])
    assert doc["outputs"]["predictions"]["path"] == "azureml://datastores/fleet_predictions/paths/${{name}}/"
    assert doc["jobs"]["score_partitions"]["mini_batch_size"] == "2"


def test_v2_cluster_has_a_system_assigned_identity_in_the_request_body(aml_settings):
    import azure.ai.ml  # noqa: F401 - the aml extra is part of the dev install

    compute = pipeline_v2.build_compute(aml_settings)
    body = compute._to_rest_object().as_dict()  # what compute.begin_create_or_update PUTs
    assert body["identity"] == {"type": "SystemAssigned"}
    props = body["properties"]["properties"]
    assert props["vmSize"] == "Standard_F8s_v2" and props["scaleSettings"]["minNodeCount"] == 0


def test_role_commands_name_the_cluster_identity_and_the_storage_account(monkeypatch, aml_settings):
    for key, value in {"AML_STORAGE_ACCOUNT": "fleetst", "AML_RESOURCE_GROUP": "fleet-rg",
                       "AML_WORKSPACE": "fleet-ws"}.items():
        monkeypatch.setenv(key, value)
    aml_settings = load_settings()
    (lookup,) = pipeline_v2.cluster_role_commands(aml_settings)
    args = shlex.split(lookup)
    assert args[:4] == ["az", "role", "assignment", "create"]
    assert args[args.index("--role") + 1] == "Storage Blob Data Contributor"
    assert args[args.index("--assignee-principal-type") + 1] == "ServicePrincipal"
    assert args[args.index("--assignee-object-id") + 1] == (
        "$(az ml compute show -n score-cpu -g fleet-rg -w fleet-ws --query identity.principal_id -o tsv)")
    assert args[args.index("--scope") + 1] == "$(az storage account show -n fleetst --query id -o tsv)"
    (known,) = pipeline_v2.cluster_role_commands(aml_settings, principal_id="0f1e2d3c")
    assert '--assignee-object-id "0f1e2d3c"' in known


def test_v2_dry_run_prints_the_cluster_and_its_role_assignments(aml_settings):
    import azure.ai.ml  # noqa: F401 - the aml extra is part of the dev install
    import typer
    import yaml
    from typer.testing import CliRunner

    from fleetscore.cli.aml import aml_app

    app = typer.Typer()
    app.add_typer(aml_app, name="aml")
    result = CliRunner().invoke(app, ["aml", "publish", "--sdk", "v2", "--dry-run"])
    assert result.exit_code == 0, result.output
    cluster_yaml, _, roles = result.stderr.partition("# role assignments")
    cluster = yaml.safe_load(cluster_yaml)
    assert cluster["identity"] == {"type": "system_assigned"} and cluster["min_instances"] == 0
    assert pipeline_v2.cluster_role_commands(aml_settings)[0] in roles.splitlines()


# ----------------------------------------------------------------------------------------------------- v1


def describe_v1_definition() -> dict:
    if _has_v1_here():
        return pipeline_v1.describe_v1(pipeline_v1.build_v1_definition(load_settings()))
    from fleetscore.cli.aml import v1_python

    python = v1_python()
    if python is None:
        pytest.fail("SDK v1 is neither installed here nor in .venv-aml-v1: run `make aml-v1` (make test does)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([python, "-m", "fleetscore.cli.aml_v1_main", "describe"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _has_v1_here() -> bool:
    try:
        import azureml.pipeline.steps  # noqa: F401
    except ImportError:
        return False
    return True


def test_v1_definition_offline(aml_settings):
    d = describe_v1_definition()
    prc = d["parallel_run_config"]
    assert prc["entry_script"] == "score.py"
    assert Path(prc["source_directory"]) == SCORING_DIR
    assert prc["output_action"] == "summary_only"
    assert prc["mini_batch_size"] == 2
    assert prc["error_threshold"] == 1 and prc["allowed_failed_count"] == 1
    assert prc["node_count"] == 3 and prc["process_count_per_node"] == 4
    assert prc["compute_target"] == "score-cpu"
    assert prc["run_invocation_timeout"] == 900 and prc["run_max_try"] == 2
    assert prc["environment"]["pip_packages"] == pipeline_v1.requirements()
    assert d["pipeline_parameters"] == {"run_id": "unset", "data_path": "data/unset", "model_version": "unset",
                                        "model_sha256": "unset"}
    prov = d["provisioning_configuration"]
    assert prov == {"name": "score-cpu", "vm_size": "Standard_F8s_v2", "vm_priority": "lowpriority",
                    "min_nodes": 0, "max_nodes": 6, "idle_seconds_before_scaledown": 300,
                    "identity_type": "SystemAssigned", "create_payload_identity": {"type": "SystemAssigned"}}
    assert d["role_assignments"] == pipeline_v2.cluster_role_commands(load_settings())
    score_args = d["steps"]["score-partitions"]["arguments"]
    assert score_args == ["--model_pack", "<model_pack side input>", "--model_pack_sha256", "${model_sha256}",
                          "--run_id", "${run_id}", "--dtype", "float32"]
    stage = d["steps"]["stage-inputs"]["arguments"]
    assert stage[stage.index("--data_path") + 1] == "${data_path}"
    assert stage[stage.index("--model_version") + 1] == "${model_version}"
    copy = d["steps"]["copy-predictions"]["arguments"]
    assert copy[copy.index("--run_id") + 1] == "${run_id}"
    assert d["datastores"] == {"data": "fleet_data", "models": "fleet_models", "predictions": "fleet_predictions"}
    assert set(d["rest_body"]["ParameterAssignments"]) == {"run_id", "data_path", "model_version", "model_sha256"}
    if (SCORING_DIR / "score.py").is_file():  # the SDK builds the real step once the entry script exists
        runner = d["runner_arguments"]
        assert "--output" in runner and runner[runner.index("--output_action") + 1] == "summary_only"
        assert runner[runner.index("--run_id") + 1] == "${run_id}"


def test_v1_cluster_side_steps_copy_a_run(tmp_path):
    data, models = tmp_path / "data", tmp_path / "models"
    (data / "r1").mkdir(parents=True)
    (data / "r2").mkdir()
    for name in ("part-00000.parquet", "part-00001.parquet"):
        (data / "r1" / name).write_bytes(b"r1")
    (data / "r2" / "part-00000.parquet").write_bytes(b"r2")
    (models / "v3" / "sub").mkdir(parents=True)
    (models / "v3" / "manifest.json").write_text("{}")
    (models / "v3" / "svm.npz").write_bytes(b"x")
    (models / "v3" / "sub" / "extra.bin").write_bytes(b"y")
    parts, pack = tmp_path / "out" / "partitions", tmp_path / "out" / "pack"
    assert pipeline_v1.main(["stage-inputs", "--data_root", str(data), "--data_path", "data/r1", "--models_root",
                             str(models), "--model_version", "v3", "--partitions_out", str(parts),
                             "--model_pack_out", str(pack)]) == 0
    assert sorted(p.name for p in parts.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert (pack / "manifest.json").is_file() and (pack / "sub" / "extra.bin").read_bytes() == b"y"
    scored, root = tmp_path / "scored", tmp_path / "predictions"
    scored.mkdir()
    (scored / "part-00000.parquet").write_bytes(b"p")
    (scored / "log.txt").write_text("not copied")
    assert pipeline_v1.copy_predictions(str(scored), str(root), "r1") == 1
    assert [p.name for p in (root / "r1").iterdir()] == ["part-00000.parquet"]
    for bad in ("../r2", "data/../r2"):
        with pytest.raises(ValueError):
            pipeline_v1.stage_inputs(str(data), f"data/{bad}", str(models), "v3", str(parts), str(pack))
    with pytest.raises(ValueError):
        pipeline_v1.copy_predictions(str(scored), str(root), "../escape")
    with pytest.raises(FileNotFoundError):
        pipeline_v1.stage_inputs(str(data), "data/none", str(models), "v3", str(parts), str(pack))


SCORING_JOB_IMPORTS = {"numpy", "pandas", "pyarrow", "sklearn", "skops", "numba", "llvmlite",  # llvmlite: numba's
                       "azureml", "azure.ai.ml", "azure.identity"}  # the Azure ML SDKs and their login


def test_scoring_job_imports_only_its_runtime_and_the_azure_ml_sdks():
    """Azure ML uploads the scoring_job folder alone: fleetscore is never there."""
    import ast

    siblings = {p.stem for p in SCORING_DIR.glob("*.py")} | {"scoring_job"}
    bad = []
    for path in sorted(SCORING_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in siblings:
                    continue
                if not any(name == ok or name.startswith(ok + ".") for ok in SCORING_JOB_IMPORTS):
                    bad.append(f"{path.name}:{node.lineno} imports {name}")
    assert not bad, bad


def test_v1_describe_is_not_a_cluster_command():
    with pytest.raises(SystemExit):
        pipeline_v1.main(["describe"])  # it needs the project's settings: python -m fleetscore.cli.aml_v1_main


V1_STEP = SNAPSHOT_ONLY + textwrap.dedent("""
    import runpy
    sys.path.insert(0, sys.argv[1])  # python runs a script with its folder first on the path
    sys.argv = ["pipeline_v1.py", *sys.argv[2:]]
    runpy.run_path("pipeline_v1.py", run_name="__main__")
""")


def test_v1_cluster_step_runs_as_a_script_from_the_snapshot(tmp_path):
    code = copy_snapshot(tmp_path / "snapshot")  # what PythonScriptStep uploads: the scoring_job folder alone
    scored, root = tmp_path / "scored", tmp_path / "predictions"
    scored.mkdir()
    (scored / "part-00000.parquet").write_bytes(b"p")
    done = run_script(V1_STEP, [str(code), "copy-predictions", "--scored", str(scored), "--predictions_root",
                                str(root), "--run_id", "r1"], cwd=code, timeout=120)
    assert "copied 1 prediction files" in done.stdout
    assert (root / "r1" / "part-00000.parquet").read_bytes() == b"p"


# ------------------------------------------------------------------------------- the entry script, harnessed

@pytest.fixture
def scoring_inputs(tmp_path):
    from sklearn.svm import OneClassSVM

    from scoring_job.pack import write_pack

    rng = np.random.default_rng(7)
    models = {}
    for device in ("d-0001", "d-0002"):
        train = rng.normal([20.0, 18.0, 22.0, 1.0], 0.5, size=(60, 4))
        models[(device, "temp")] = OneClassSVM(nu=0.05, gamma="scale").fit(train)
    pack = tmp_path / "models" / "v1"
    write_pack(models, pack, version="v1")
    digest = hashlib.sha256((pack / "manifest.json").read_bytes()).hexdigest()
    data = tmp_path / "data" / "r1"
    data.mkdir(parents=True)
    end = pd.Timestamp("2026-11-23T10:05:00Z")
    for i, devices in enumerate((["d-0001"], ["d-0002", "d-0003"], ["d-0001", "d-0002"])):
        rows = []
        for device in devices:
            for k in range(3):
                values = rng.normal(20.0, 1.0, size=10) if k < 2 else rng.normal(60.0, 1.0, size=10)
                rows.append({"device": device, "sensor": "temp", "window_end": end + pd.Timedelta(minutes=5 * k),
                             "n": 10, "sum": float(values.sum()), "sumsq": float((values**2).sum()),
                             "min": float(values.min()), "max": float(values.max())})
        pd.DataFrame(rows).to_parquet(data / f"part-{i:05d}.parquet", index=False)
    (data / "manifest.json").write_text('{"run_id": "r1"}')  # the run manifest beside the partitions
    code = copy_snapshot(tmp_path / "snapshot")  # the folder Azure ML uploads, under another name
    return {"code": code, "pack": str(pack), "sha256": digest, "data": data, "out": tmp_path / "out"}


def run_harness(inputs: dict, argv: list[str], mini_batches: list[list[str]]) -> list[dict]:
    """score.py's result rows over every mini-batch (one row per partition file)."""
    batches = drive(inputs["code"], argv, mini_batches)
    for batch, result in zip(mini_batches, batches, strict=True):
        assert len(result["rows"]) == len(batch), (len(result["rows"]), len(batch))
    return [row for result in batches for row in result["rows"]]


def check_outputs(inputs: dict, rows: list[dict]) -> None:
    names = sorted(p.name for p in inputs["data"].glob("*.parquet"))
    assert sorted(r["partition"] for r in rows if r["status"] != "skipped") == names
    assert all(r["status"] == "ok" for r in rows if r["partition"].endswith(".parquet"))
    written = sorted(p.name for p in inputs["out"].iterdir() if p.suffix == ".parquet")
    assert written == names  # one predictions file per partition, same basename
    for name in names:
        frame = pd.read_parquet(inputs["out"] / name)
        assert set(frame.columns) >= PREDICTION_COLUMNS
        assert set(frame["run_id"]) == {"r1"}


def test_entry_script_under_the_v1_runner(scoring_inputs):
    files = sorted(str(p) for p in scoring_inputs["data"].glob("*.parquet"))
    out = scoring_inputs["out"]
    out.mkdir()
    argv = ["--client_sdk_version", "1.61.0", "--scoring_module_name", "score.py", "--mini_batch_size", "2",
            "--error_threshold", "0", "--output_action", "summary_only", "--logging_level", "INFO",
            "--run_invocation_timeout", "600", "--run_max_try", "3", "--create_snapshot_at_runtime", "True",
            "--allowed_failed_count", "0", "--output", str(out), "--process_count_per_node", "2",
            "--model_pack", scoring_inputs["pack"], "--run_id", "r1", "--dtype", "float64",
            "--input_fds_0", "partitions"]
    rows = run_harness(scoring_inputs, argv, [files[:2], files[2:]])
    check_outputs(scoring_inputs, rows)


def test_entry_script_under_the_v2_runner(scoring_inputs):
    files = sorted(str(p) for p in scoring_inputs["data"].iterdir())  # a uri_folder input lists every file
    assert any(f.endswith("manifest.json") for f in files)
    out = scoring_inputs["out"]
    out.mkdir()
    resolved = (pipeline_v2.PROGRAM_ARGUMENTS
                .replace("${{inputs.model_pack}}", scoring_inputs["pack"])
                .replace("${{inputs.model_sha256}}", scoring_inputs["sha256"])
                .replace("${{outputs.predictions}}", str(out))
                .replace("${{inputs.run_id}}", "r1")
                .replace("${{inputs.dtype}}", "float32"))
    assert "${{" not in resolved
    argv = [*shlex.split(resolved), "--logging_level", "INFO", "--mini_batch_size", "1", "--error_threshold", "0",
            "--mini_batch_error_threshold", "0"]
    rows = run_harness(scoring_inputs, argv, [[f] for f in files])
    check_outputs(scoring_inputs, rows)
    assert [r["status"] for r in rows if r["partition"] == "manifest.json"] == ["skipped"]


def test_v2_publish_sends_the_identity_and_returns_the_role_for_its_principal(monkeypatch, aml_settings):
    """publish_v2 against a stand-in MLClient (no workspace): the cluster it sends has the identity, and the role
    command it returns names the principal the service gave that identity."""
    from types import SimpleNamespace

    from azure.ai.ml.entities import IdentityConfiguration

    sent: dict = {}

    def done(value):
        return SimpleNamespace(result=lambda: value)

    def create_compute(compute):
        sent["compute"] = compute
        compute.identity = IdentityConfiguration(type="system_assigned", principal_id="5a4b3c2d")
        return done(compute)

    endpoint = SimpleNamespace(defaults=SimpleNamespace(deployment_name=None),
                               scoring_uri="https://fleet.westeurope.inference.ml.azure.com/jobs")
    client = SimpleNamespace(
        compute=SimpleNamespace(begin_create_or_update=create_compute),
        datastores=SimpleNamespace(create_or_update=lambda store: store),
        components=SimpleNamespace(create_or_update=lambda c: SimpleNamespace(name="fleetscore_scoring", version="1")),
        batch_endpoints=SimpleNamespace(begin_create_or_update=lambda e: done(endpoint), get=lambda name: endpoint),
        batch_deployments=SimpleNamespace(begin_create_or_update=lambda d: done(d)),
    )
    monkeypatch.setattr(pipeline_v2, "ml_client", lambda settings, credential=None: client)
    result = pipeline_v2.publish_v2(aml_settings, log=lambda message: None)
    assert sent["compute"]._to_rest_object().as_dict()["identity"]["type"] == "SystemAssigned"
    assert result["cluster_principal_id"] == "5a4b3c2d"
    assert result["role_assignments"] == pipeline_v2.cluster_role_commands(aml_settings, "5a4b3c2d")
