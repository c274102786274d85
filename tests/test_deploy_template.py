"""deploy/lorapipe.yaml: valid for cfn-lint, wired the way the recipe was, and without administrator roles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "deploy" / "lorapipe.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, ...) as plain values for structural checks."""


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}


_CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def _lint(path: Path):
    from cfnlint.api import ManualArgs, lint_file

    return lint_file(path, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))


def test_template_passes_cfn_lint():
    matches = _lint(TEMPLATE)
    assert matches == [], "\n".join(str(match) for match in matches)


def test_cfn_lint_catches_a_broken_template(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("Type: AWS::ECR::Repository", "Type: AWS::ECR::Repositry"))
    assert _lint(broken), "cfn-lint should reject an unknown resource type"


def test_template_has_the_recipe_resources(template):
    types = {resource["Type"] for resource in template["Resources"].values()}
    for expected in (
        "AWS::S3::Bucket",
        "AWS::ECR::Repository",
        "AWS::CodeBuild::Project",
        "AWS::Events::Rule",
        "AWS::IAM::Role",
    ):
        assert expected in types
    project = template["Resources"]["ImageBuildProject"]["Properties"]
    assert project["Source"]["BuildSpec"] == "container/buildspec.yml"
    assert (REPO / "container" / "buildspec.yml").is_file()
    assert project["Environment"]["PrivilegedMode"] is True  # docker build needs it


def test_bucket_is_private_encrypted_and_tls_only(template):
    bucket = template["Resources"]["DataBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]
    policy = template["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert any(s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false" for s in policy)


def _statements(template):
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        documents = [policy["PolicyDocument"] for policy in props.get("Policies", [])]
        if "PolicyDocument" in props and resource["Type"] != "AWS::S3::BucketPolicy":
            documents.append(props["PolicyDocument"])
        for document in documents:
            for statement in document["Statement"]:
                if "If" in statement:  # Fn::If [condition, statement, NoValue]
                    statement = statement["If"][1]
                yield name, statement


def test_roles_are_least_privilege(template):
    # list and token actions IAM cannot scope to a resource
    wildcard_resource_ok = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData", "sagemaker:ListPipelines"}
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::IAM::Role":
            assert "ManagedPolicyArns" not in resource["Properties"], f"{name}: no managed (admin) policies"
    statements = list(_statements(template))
    assert statements
    for name, statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            assert "*" not in action, f"{name}: wildcard action {action}"
        if statement.get("Resource") == "*":
            assert set(actions) <= wildcard_resource_ok, f"{name}: {actions} on every resource"
        assert statement["Effect"] == "Allow"


def test_pass_role_is_limited_to_sagemaker(template):
    passes = [s for _, s in _statements(template) if s["Action"] == "iam:PassRole"]
    assert len(passes) == 2  # the pipeline user and the Pipelines execution role
    for statement in passes:
        assert statement["Condition"]["StringEquals"]["iam:PassedToService"] == "sagemaker.amazonaws.com"


def test_codecommit_push_rule_targets_the_build(template):
    rule = template["Resources"]["TriggerRule"]["Properties"]
    assert rule["EventPattern"]["source"] == ["aws.codecommit"]
    assert rule["Targets"][0]["Arn"] == {"GetAtt": "ImageBuildProject.Arn"}
