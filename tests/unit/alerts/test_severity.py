"""Alert severity: the rule over training-score quantiles, and the quantiles read from a model-pack manifest."""

from __future__ import annotations

import json

import numpy as np
from sklearn.svm import OneClassSVM

from fleetscore.alerts.severity import quantiles_from_manifest, severity
from scoring_job.pack import write_pack
from tests.helpers.fleet import (
    Q,
)


def test_severity_rule(tmp_path):
    assert severity(3.0, Q) == "critical"          # >= max + 2 * (q99 - q50) = 2.2
    assert severity(2.2, Q) == "critical"
    assert severity(1.0, Q) == "high"              # > max
    assert severity(0.1, Q) == "medium"            # > q99
    assert severity(0.0, {**Q, "q99": 0.05}) == "low"
    assert severity(5.0, None) == "medium" and severity(5.0, {**Q, "max": None}) == "medium"
    fitted = OneClassSVM(nu=0.5).fit(np.random.default_rng(0).normal(size=(8, 4)))
    quantiles = {"q50": -1.0, "q90": -0.5, "q95": -0.25, "q99": 0.0, "max": 0.2}
    manifest = write_pack({("a", "t"): fitted, ("b", "t"): fitted}, tmp_path / "p",
                          training={("a", "t"): {"score_quantiles": quantiles}})
    table = quantiles_from_manifest(json.loads(json.dumps(manifest)))
    assert table[("a", "t")] == quantiles and severity(9.0, table[("b", "t")]) == "medium"
    assert table[("b", "t")] == dict.fromkeys(quantiles)
