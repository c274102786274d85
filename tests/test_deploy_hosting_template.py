"""deploy/hosting.yaml: cfn-lint clean, the same resources and names `lorapipe deploy endpoint` creates, and an
execution role that can do no more than serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_deploy_template import _CfnLoader, _lint, _statements

from lorapipe.deploy.endpoints import MODEL_DOWNLOAD_S, STARTUP_HEALTH_CHECK_S
from lorapipe.deploy.scaling import (
    BACKLOG_METRIC,
    DIMENSION,
    INVOCATIONS_METRIC,
    NAMESPACE,
    NO_CAPACITY_METRIC,
    VARIANT,
)
from lorapipe.hosting_contract import BASE_MODEL_ENV, LORA_PREFIX_ENV

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "hosting.yaml"


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def test_hosting_template_passes_cfn_lint():
    matches = _lint(TEMPLATE)
    assert matches == [], "\n".join(str(match) for match in matches)


def test_cfn_lint_catches_a_broken_hosting_template(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        TEMPLATE.read_text().replace(
            "ContainerStartupHealthCheckTimeoutInSeconds: 900",
            "ContainerStartupHealthCheckTimeoutInSeconds: nine hundred",
        )
    )
    assert _lint(broken)


def test_same_resources_and_names_as_the_deploy_commands(template):
    resources = template["Resources"]
    types = {resource["Type"] for resource in resources.values()}
    assert {
        "AWS::SageMaker::Model",
        "AWS::SageMaker::EndpointConfig",
        "AWS::SageMaker::Endpoint",
        "AWS::ApplicationAutoScaling::ScalableTarget",
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        "AWS::CloudWatch::Alarm",
        "AWS::SNS::Topic",
        "AWS::IAM::Role",
    } <= types
    environment = resources["Model"]["Properties"]["PrimaryContainer"]["Environment"]
    assert set(environment) == {BASE_MODEL_ENV, LORA_PREFIX_ENV}
    variant = resources["EndpointConfig"]["Properties"]["ProductionVariants"][0]
    assert variant["VariantName"] == VARIANT
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == STARTUP_HEALTH_CHECK_S
    assert variant["ModelDataDownloadTimeoutInSeconds"] == MODEL_DOWNLOAD_S
    target = resources["ScalableTarget"]["Properties"]
    assert (target["ServiceNamespace"], target["ScalableDimension"]) == (NAMESPACE, DIMENSION)
    assert target["ResourceId"]["Sub"].endswith(f"/variant/{VARIANT}")
    tracking = resources["TargetTrackingPolicy"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    realtime = tracking["PredefinedMetricSpecification"]["If"][2]
    asynchronous = tracking["CustomizedMetricSpecification"]["If"][1]
    assert realtime["PredefinedMetricType"] == INVOCATIONS_METRIC
    assert asynchronous["MetricName"] == BACKLOG_METRIC
    alarm = resources["BacklogWithoutCapacityAlarm"]
    assert alarm["Condition"] == "ScalesFromZero" and alarm["Properties"]["MetricName"] == NO_CAPACITY_METRIC
    assert alarm["Properties"]["AlarmActions"] == [{"Ref": "ScaleOutFromZeroPolicy"}]
    assert template["Rules"]["RealTimeKeepsAnInstance"]["RuleCondition"] == {
        "Equals": [{"Ref": "Asynchronous"}, "false"]
    }


def test_execution_role_only_serves(template):
    assert "ManagedPolicyArns" not in template["Resources"]["HostingRole"]["Properties"]
    wildcard_resource_ok = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
    statements = {s.get("Sid"): s for _, s in _statements(template)}
    for sid, statement in statements.items():
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert statement["Effect"] == "Allow"
        assert not any("*" in action for action in actions), f"{sid}: wildcard action"
        if statement["Resource"] == "*":
            assert set(actions) <= wildcard_resource_ok, f"{sid}: {actions} on every resource"
    writes = [s for s in statements.values() if "s3:PutObject" in str(s["Action"])]
    assert len(writes) == 1 and all("/results/" in r["Sub"] or "/failures/" in r["Sub"] for r in writes[0]["Resource"])
    reads = statements["ReadModelsAndLoras"]["Resource"]["Sub"]
    assert reads.endswith("${DataBucketName}/${ModelPrefix}/*")
    assert statements["ListModelsAndLoras"]["Condition"]["StringLike"]["s3:prefix"] == [{"Sub": "${ModelPrefix}/*"}]
