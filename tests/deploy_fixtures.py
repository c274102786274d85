"""SageMaker hosting APIs through moto for the deploy tests, and the one API moto does not emulate.

moto 5 answers CreateModel/EndpointConfig/Endpoint, Describe*, Delete*, Application Auto Scaling, CloudWatch alarms,
SNS and InvokeEndpoint(Async) (canned answers), but raises NotImplementedError for UpdateEndpoint and knows no
instance type newer than ml.g4dn (so tests use ml.g4dn.xlarge where a user writes ml.g5.xlarge).
`moto_update_endpoint` adds UpdateEndpoint to moto's emulation only: the endpoint switches to the new config and
stays InService. lorapipe's code is never changed."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

ROLE = "arn:aws:iam::123456789012:role/lorapipe-hosting"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/lorapipe:1"
MOTO_GPU = "ml.g4dn.xlarge"


@contextmanager
def moto_update_endpoint():
    from moto.core.responses import ActionResult
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    def backend_update(self, endpoint_name: str, endpoint_config_name: str):
        endpoint = self.endpoints[endpoint_name]  # KeyError -> moto's 500, as for any unknown name
        config = self.describe_endpoint_config(endpoint_config_name)
        endpoint.endpoint_config_name = endpoint_config_name
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        return endpoint

    def response_update(self):
        endpoint = self.sagemaker_backend.update_endpoint(
            self._get_param("EndpointName"), self._get_param("EndpointConfigName")
        )
        return ActionResult({"EndpointArn": endpoint.arn})

    SageMakerModelBackend.update_endpoint = backend_update
    SageMakerResponse.update_endpoint = response_update
    try:
        yield
    finally:
        del SageMakerModelBackend.update_endpoint
        del SageMakerResponse.update_endpoint


@pytest.fixture
def moto_aws(monkeypatch):
    """Every AWS API in moto (S3 included), fake credentials, us-east-1; yields the deploy library's Aws."""
    moto = pytest.importorskip("moto")
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws(), moto_update_endpoint():
        from lorapipe.deploy.aws import Aws

        yield Aws("us-east-1")
