"""``python -m fleetscore.cli.aml_v1_main describe|publish``: the SDK v1 pipeline with the project's settings.

``fleetscore aml publish --sdk v1`` runs this in an interpreter with SDK v1 (usually ``.venv-aml-v1``, which has
fleetscore installed with the ``aml-v1`` extra). ``describe`` prints the offline definition as JSON (no
workspace, no credentials); ``publish`` creates the cluster (system-assigned identity), datastores and datasets
and publishes the pipeline, logging to stderr and printing its REST endpoints as JSON. Both print the
``az role assignment create`` commands the cluster's identity needs on stderr. The definitions themselves live in
:mod:`scoring_job.pipeline_v1`, which stays free of fleetscore (the cluster runs its ``stage-inputs`` and
``copy-predictions`` steps from the scoring_job folder alone).
"""

from __future__ import annotations

import argparse
import json
import sys

from fleetscore.settings import load_settings
from scoring_job import pipeline_v1  # cheap: it imports SDK v1 inside its functions


def main(argv: list[str] | None = None) -> int:
    """Describe or publish the v1 pipeline with the project's settings; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fleetscore.cli.aml_v1_main", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("describe", help="print the offline v1 definition as JSON (needs the v1 SDK)")
    sub.add_parser("publish", help="publish the pipeline (needs the v1 SDK and a workspace)")
    args, _ = parser.parse_known_args(argv)
    settings = load_settings()
    if args.command == "describe":
        result = pipeline_v1.describe_v1(pipeline_v1.build_v1_definition(settings))
        print(json.dumps(result, indent=2, default=str))
    else:
        result = pipeline_v1.publish_v1(settings, log=lambda m: print(m, file=sys.stderr))
        print(json.dumps(result, indent=2))
    print_role_commands(result["role_assignments"])
    return 0


def print_role_commands(commands: list[str]) -> None:
    """The cluster identity's role assignments on stderr, one shell command a line (stdout stays JSON)."""
    print("# role assignments for the cluster's managed identity (run once, as an Owner of the storage account):",
          file=sys.stderr)
    for command in commands:
        print(command, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
