"""The Functions app stays free of the Azure ML SDK: not in its requirements, never imported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fleetscore.settings import Settings, load_settings
from tests.helpers import REPO

FORBIDDEN_MODULES = ("azureml", "azure.ai.ml")


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_functions_requirements_have_no_azure_ml_sdk():
    names = requirement_names(REPO / "requirements.txt")
    assert {"azure-functions", "azure-identity", "azure-storage-blob", "requests", "pyodbc"} <= set(names)
    assert not [n for n in names if n.startswith("azureml") or n.startswith("azure-ai-ml")]


def test_scoring_environment_is_separate():
    names = requirement_names(REPO / "scoring_job" / "requirements.txt")
    assert {"numpy", "pandas", "pyarrow", "scikit-learn", "skops"} <= set(names)
    assert "azure-functions" not in names


def test_importing_the_app_and_the_aml_backend_loads_no_azure_ml_sdk(tmp_path):
    code = (
        "import json, sys\n"
        "import function_app\n"
        "import fleetscore.backends.aml\n"
        f"bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {FORBIDDEN_MODULES!r}))\n"
        "print(json.dumps(bad))\n"
    )
    env = {**os.environ, "FLEETSCORE_LOCAL_SETTINGS": str(tmp_path / "none.json"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_local_settings_sample_lists_every_setting_with_safe_values(tmp_path, monkeypatch):
    doc = json.loads((REPO / "local.settings.sample.json").read_text(encoding="utf-8"))
    values = doc["Values"]
    assert doc["IsEncrypted"] is False
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert "AzureWebJobsFeatureFlags" not in values  # worker indexing is the host's default since v4.28
    assert values["EVENTHUB_CONSUMER_GROUP"]
    names = {field.alias or name for name, field in Settings.model_fields.items()}
    missing = sorted(names - set(values))
    assert not missing, f"add to local.settings.sample.json: {missing}"
    sample = tmp_path / "local.settings.json"
    sample.write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.setenv("FLEETSCORE_LOCAL_SETTINGS", str(sample))
    settings = load_settings()
    assert settings.secrets() == []  # placeholders hold no secret


def test_host_json_is_set_for_this_workload():
    host = json.loads((REPO / "host.json").read_text(encoding="utf-8"))
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    hubs = host["extensions"]["eventHubs"]
    assert hubs["maxEventBatchSize"] == 500 and hubs["batchCheckpointFrequency"] == 1 and hubs["prefetchCount"] >= 500
    # maxWaitTime is only considered when minEventBatchSize > 1 (Event Hubs extension v5.3+): never one alone
    assert hubs.get("minEventBatchSize", 1) > 1 or "maxWaitTime" not in hubs
    assert host["extensions"]["blobs"]["poisonBlobThreshold"] == 5
    assert "functionTimeout" in host and "retry" not in host
