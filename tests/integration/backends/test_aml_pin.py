"""Both Azure ML submissions carry the run's manifest pin, the argument score.py checks the pack against."""

from __future__ import annotations

from pathlib import Path

from fleetscore.backends import aml
from fleetscore.backends.base import SubmitRequest

DIGEST = "0123456789abcdef" * 4
REQ = SubmitRequest.for_run("20261123T100500Z", 0, "v20261120", DIGEST)


def test_the_published_pipeline_gets_the_pin_as_a_parameter():
    body = aml.pipeline_body(REQ, "fleetscore")
    assert body["ParameterAssignments"] == {"run_id": REQ.run_id, "data_path": f"data/{REQ.run_id}",
                                            "model_version": "v20261120", "model_sha256": DIGEST}


def test_the_batch_endpoint_gets_the_pin_as_a_literal_input_as_azure_ai_ml_sends_it():
    from azure.ai.ml import Input
    from azure.ai.ml._schema._deployment.batch.batch_job import BatchJobSchema
    from azure.ai.ml.constants._common import BASE_PATH_CONTEXT_KEY, PARAMS_OVERRIDE_KEY
    from azure.ai.ml.constants._endpoint import EndpointYamlFields

    body = aml.batch_endpoint_body(REQ, "fleet")["properties"]
    assert body["inputData"]["model_sha256"] == {"jobInputType": "Literal", "value": DIGEST}
    inputs = {"run_id": Input(type="string", default=REQ.run_id), "dtype": Input(type="string", default="float64"),
              "model_sha256": Input(type="string", default=DIGEST),
              "partitions": Input(type="uri_folder", path=body["inputData"]["partitions"]["uri"]),
              "model_pack": Input(type="uri_folder", path=body["inputData"]["model_pack"]["uri"])}
    context = {BASE_PATH_CONTEXT_KEY: Path("."),
               PARAMS_OVERRIDE_KEY: [{EndpointYamlFields.BATCH_JOB_INPUT_DATA: inputs}]}
    assert BatchJobSchema(context=context).load(data={})["inputData"] == body["inputData"]
