"""Application Auto Scaling for an endpoint's variant, as the requests AWS documents (pure: tested without AWS).

- Real-time: target tracking on the predefined `SageMakerVariantInvocationsPerInstance` (invocations per instance
  per minute). A real-time variant keeps at least one instance.
- Asynchronous: target tracking on `ApproximateBacklogSizePerInstance` with a minimum of 0 (scale to zero), plus
  the step-scaling policy fired by a CloudWatch alarm on `HasBacklogWithoutCapacity`: target tracking cannot
  leave zero instances on its own (with no instance there is no per-instance backlog to track), so the alarm
  adds the first instance when requests wait and none is running ("Autoscale an asynchronous endpoint",
  SageMaker developer guide).
"""

from __future__ import annotations

from dataclasses import dataclass

VARIANT = "AllTraffic"
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
INVOCATIONS_METRIC = "SageMakerVariantInvocationsPerInstance"
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
NO_CAPACITY_METRIC = "HasBacklogWithoutCapacity"
METRIC_NAMESPACE = "AWS/SageMaker"


@dataclass(frozen=True)
class Scaling:
    """Instance bounds and the per-instance target: invocations per minute (real-time) or waiting requests (async)."""

    min_instances: int
    max_instances: int
    target: float
    scale_in_cooldown_s: int = 600  # an SDXL instance takes minutes to start: do not give it back too eagerly
    scale_out_cooldown_s: int = 120


def resource_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def policy_names(endpoint: str) -> dict[str, str]:
    return {
        "target": f"{endpoint}-target-tracking",
        "from_zero": f"{endpoint}-scale-out-from-zero",
        "alarm": f"{endpoint}-{NO_CAPACITY_METRIC}",
    }


def scalable_target_request(endpoint: str, scaling: Scaling) -> dict:
    return {
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": DIMENSION,
        "MinCapacity": scaling.min_instances,
        "MaxCapacity": scaling.max_instances,
    }


def target_tracking_request(endpoint: str, scaling: Scaling, *, asynchronous: bool) -> dict:
    if asynchronous:
        metric = {
            "CustomizedMetricSpecification": {
                "MetricName": BACKLOG_METRIC,
                "Namespace": METRIC_NAMESPACE,
                "Statistic": "Average",
                "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
            }
        }
    else:
        metric = {"PredefinedMetricSpecification": {"PredefinedMetricType": INVOCATIONS_METRIC}}
    return {
        "PolicyName": policy_names(endpoint)["target"],
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(scaling.target),
            **metric,
            "ScaleInCooldown": scaling.scale_in_cooldown_s,
            "ScaleOutCooldown": scaling.scale_out_cooldown_s,
        },
    }


def scale_from_zero_request(endpoint: str, scaling: Scaling) -> dict:
    """The step policy the HasBacklogWithoutCapacity alarm runs: one more instance while requests wait."""
    return {
        "PolicyName": policy_names(endpoint)["from_zero"],
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": DIMENSION,
        "PolicyType": "StepScaling",
        "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Average",
            "Cooldown": scaling.scale_out_cooldown_s,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
        },
    }


def no_capacity_alarm_request(endpoint: str, policy_arn: str) -> dict:
    return {
        "AlarmName": policy_names(endpoint)["alarm"],
        "MetricName": NO_CAPACITY_METRIC,
        "Namespace": METRIC_NAMESPACE,
        "Statistic": "Average",
        "Period": 60,
        "EvaluationPeriods": 2,
        "DatapointsToAlarm": 2,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "missing",
        "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
        "AlarmDescription": f"{endpoint}: requests wait and no instance runs; adds one",
        "AlarmActions": [policy_arn],
    }


def apply_scaling(aws, endpoint: str, scaling: Scaling, *, asynchronous: bool) -> list[str]:
    """Register the variant and put its policies (and the async alarm); returns what was done, for the user."""
    autoscaling = aws.client("application-autoscaling")
    autoscaling.register_scalable_target(**scalable_target_request(endpoint, scaling))
    autoscaling.put_scaling_policy(**target_tracking_request(endpoint, scaling, asynchronous=asynchronous))
    metric = BACKLOG_METRIC if asynchronous else INVOCATIONS_METRIC
    bounds = f"{scaling.min_instances}..{scaling.max_instances}"
    done = [f"autoscaling {bounds} instances, target {scaling.target:g} {metric}"]
    if asynchronous and scaling.min_instances == 0:
        policy = autoscaling.put_scaling_policy(**scale_from_zero_request(endpoint, scaling))
        aws.client("cloudwatch").put_metric_alarm(**no_capacity_alarm_request(endpoint, policy["PolicyARN"]))
        done.append(f"alarm {policy_names(endpoint)['alarm']} scales out from zero")
    return done


def remove_scaling(aws, endpoint: str) -> list[str]:
    """Deregister the variant (which deletes its policies) and delete the alarm; absent pieces are skipped."""
    done = []
    autoscaling = aws.client("application-autoscaling")
    found = autoscaling.describe_scalable_targets(
        ServiceNamespace=NAMESPACE,
        ResourceIds=[resource_id(endpoint)],
        ScalableDimension=DIMENSION,
    )["ScalableTargets"]
    if found:
        autoscaling.deregister_scalable_target(
            ServiceNamespace=NAMESPACE,
            ResourceId=resource_id(endpoint),
            ScalableDimension=DIMENSION,
        )
        done.append("autoscaling target deregistered")
    cloudwatch = aws.client("cloudwatch")
    alarm = policy_names(endpoint)["alarm"]
    if cloudwatch.describe_alarms(AlarmNames=[alarm])["MetricAlarms"]:
        cloudwatch.delete_alarms(AlarmNames=[alarm])
        done.append(f"alarm {alarm} deleted")
    return done
