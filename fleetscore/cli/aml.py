"""`fleetscore aml ...`: build, print and publish the Azure ML scoring job definitions.

The SDKs are imported inside the functions of :mod:`scoring_job.pipeline_v1` and ``pipeline_v2`` only. SDK v2
(azure-ai-ml, the ``aml`` extra) installs beside the project's own dependencies; SDK v1 (azureml-pipeline-steps)
pins numpy < 2.3.3, pyarrow < 24 and azure-identity <= 1.17, so it lives in its own venv (``make aml-v1`` →
``.venv-aml-v1``), and the v1 commands (:mod:`fleetscore.cli.aml_v1_main`) run there when the current
interpreter lacks it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fleetscore.cli.console import err, settings_or_exit
from scoring_job import pipeline_v1, pipeline_v2  # cheap: both import their SDK inside functions

aml_app = typer.Typer(help="Azure ML: the scoring job as a v1 published pipeline or a v2 batch endpoint.",
                      no_args_is_help=True)
REPO = Path(__file__).resolve().parents[2]
V1_VENV_PYTHON = REPO / ".venv-aml-v1" / "bin" / "python"


class Sdk(str, Enum):
    v1 = "v1"
    v2 = "v2"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def v1_python() -> str | None:
    """An interpreter with SDK v1: this one, ``FLEETSCORE_AML_V1_PYTHON``, or ``.venv-aml-v1``."""
    if _has("azureml.pipeline.steps"):
        return sys.executable
    configured = os.environ.get("FLEETSCORE_AML_V1_PYTHON")
    if configured and Path(configured).exists():
        return configured
    return str(V1_VENV_PYTHON) if V1_VENV_PYTHON.exists() else None


def _run_v1(command: str) -> None:
    python = v1_python()
    if python is None:
        err.print(f"[red]{escape(pipeline_v1.INSTALL_HINT)}[/red]")
        raise typer.Exit(1)
    settings_or_exit()  # fail early, here, on a wrong setting
    done = subprocess.run([python, "-m", "fleetscore.cli.aml_v1_main", command], cwd=REPO, check=False)
    if done.returncode:
        raise typer.Exit(done.returncode)


@aml_app.command("publish")
def publish(
    sdk: Annotated[Sdk, typer.Option("--sdk", help="v2: batch endpoint (supported); v1: published pipeline")] = Sdk.v2,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build offline and print; no credentials.")] = False,
) -> None:
    """Create or update the scoring job on Azure ML and print the endpoint the timer submits to."""
    if sdk is Sdk.v1:
        _run_v1("describe" if dry_run else "publish")
        if not dry_run:
            err.print("set AML_PIPELINE_ENDPOINT to the pipeline_endpoint above and SCORING_BACKEND=aml-pipeline")
        return
    if not _has("azure.ai.ml"):
        err.print(f"[red]{escape(pipeline_v2.INSTALL_HINT)}[/red]")
        raise typer.Exit(1)

    settings = settings_or_exit()
    if dry_run:
        typer.echo(pipeline_v2.to_yaml(pipeline_v2.build_v2_job(settings)), nl=False)
        typer.echo(f"# compute cluster that publish creates or updates:\n{_compute_yaml(settings)}", err=True, nl=False)
        _print_roles(pipeline_v2.cluster_role_commands(settings))
        return
    result = pipeline_v2.publish_v2(settings, log=lambda message: err.print(message, markup=False))
    typer.echo(json.dumps(result, indent=2))
    _print_roles(result["role_assignments"])
    err.print(f"set AML_BATCH_ENDPOINT={result['scoring_uri']} AML_BATCH_DEPLOYMENT={result['deployment']} "
              "and SCORING_BACKEND=aml-batch-endpoint")


def _compute_yaml(settings: object) -> str:
    buf = io.StringIO()
    pipeline_v2.build_compute(settings).dump(buf)
    return buf.getvalue()


def _print_roles(commands: list[str]) -> None:
    """The cluster identity's role assignments, one shell command a line on stderr (never wrapped)."""
    typer.echo("# role assignments for the cluster's managed identity (run once, as an Owner of the storage "
               "account):", err=True)
    for command in commands:
        typer.echo(command, err=True)
