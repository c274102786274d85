"""boto3 clients for the deploy commands (boto3 imported on first use) and AWS errors as one-line reasons."""

from __future__ import annotations


class Aws:
    """Where the AWS calls go: a region and optional endpoint overrides (SageMaker, S3); one session for all."""

    def __init__(
        self,
        region: str | None = None,
        *,
        sagemaker_endpoint_url: str | None = None,
        s3_endpoint_url: str | None = None,
    ):
        self.region = region
        self.sagemaker_endpoint_url = sagemaker_endpoint_url
        self.s3_endpoint_url = s3_endpoint_url
        self._session = None

    def client(self, service: str):
        if self._session is None:
            import boto3

            self._session = boto3.session.Session(region_name=self.region)
        endpoint = {
            "sagemaker": self.sagemaker_endpoint_url,
            "sagemaker-runtime": self.sagemaker_endpoint_url,
            "s3": self.s3_endpoint_url,
        }.get(service)
        return self._session.client(service, endpoint_url=endpoint)


def aws_reason(exc: Exception) -> str:
    """`Code: Message` of a botocore ClientError, else the exception's type and text."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code')}: {error.get('Message')}"
    return f"{type(exc).__name__}: {exc}"


def is_not_found(exc: Exception) -> bool:
    """SageMaker answers a missing resource with ValidationException 'Could not find ...'."""
    text = aws_reason(exc).lower()
    return "could not find" in text or "not found" in text or "does not exist" in text
