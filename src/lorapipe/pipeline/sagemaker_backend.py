"""SageMaker backend: one training job per run (the recipe's job, plus checkpoints, spot and a content hash).

``train`` = ``submit`` (CreateTrainingJob) -> ``wait`` (DescribeTrainingJob + CloudWatch log lines into the run
log; SIGTERM of the worker becomes StopTrainingJob, see ``stop``)
-> ``fetch`` (download ``model.tar.gz``, unpack safely, verify).
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from lorapipe.container_contract import CONFIG_CHANNEL, TRAIN_CHANNEL, normalise_s3_prefix
from lorapipe.deploy.aws import aws_reason
from lorapipe.errors import PipelineError, StoreError
from lorapipe.file_names import DATASET_CONFIG_NAME
from lorapipe.hashes import sha256_file
from lorapipe.pipeline.backend import TrainJob
from lorapipe.pipeline.request import RunRequest
from lorapipe.pipeline.runlog import Cancellation, RunLog

# One stable progress line per step from the trainer (`step=12 loss=0.0812 lr=0.0004`) -> CloudWatch metrics.
METRIC_DEFINITIONS = (
    {"Name": "train:loss", "Regex": r"step=\d+ loss=([-+0-9.eE]+)"},
    {"Name": "train:step", "Regex": r"step=(\d+) loss="},
)
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
FINAL_STATUSES = frozenset({"Completed", "Failed", "Stopped"})
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"


def job_name_for(run_id: str) -> str:
    """A valid, unique training-job name (<= 63 chars of [a-zA-Z0-9-])."""
    return ("lorapipe-" + re.sub(r"[^a-zA-Z0-9-]", "-", run_id))[:63].rstrip("-")


def split_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise PipelineError(f"{url}: not an s3:// URL")
    bucket, _, key = url[len("s3://") :].partition("/")
    return bucket, key


def hyperparameters_for(job: TrainJob) -> dict[str, str]:
    """`--set` overrides as SageMaker hyperparameters (strings, as the API and the contract require)."""
    hyperparameters: dict[str, str] = {}
    for override in job.overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--set {override!r}: expected key=value")
        hyperparameters[key.strip()] = value
    if job.base_model:
        hyperparameters["pretrained_model_name_or_path"] = job.base_model
    return hyperparameters


class SageMakerBackend:
    name = "sagemaker"

    def __init__(self, request: RunRequest, *, session=None) -> None:
        self.request = request
        self.options = request.sagemaker
        self._session = session

    @classmethod
    def from_request(cls, request: RunRequest) -> SageMakerBackend:
        return cls(request)

    # -- clients (boto3 imported here: the pipeline's local path never pays for it) ------------------------------
    def _boto_session(self):
        if self._session is None:
            import boto3

            self._session = boto3.session.Session(region_name=self.options.region)
        return self._session

    def _sagemaker(self):
        return self._boto_session().client("sagemaker", endpoint_url=self.options.endpoint_url)

    def _s3(self):
        return self._boto_session().client("s3", endpoint_url=self.request.s3_endpoint_url)

    # -- the request ---------------------------------------------------------------------------------------------
    def job_request(self, job: TrainJob, content_sha256: str | None = None, config_url: str | None = None) -> dict:
        """The CreateTrainingJob arguments for this job (pure: tested without any AWS call).

        `config_url`: the S3 prefix holding an explicit --config TOML, sent as the `config` channel."""
        options = self.options
        if not options.image:
            raise PipelineError("--sagemaker-image: the sagemaker backend needs the training image URI; see container/")
        if not options.role_arn:
            raise PipelineError(
                "--sagemaker-role: the sagemaker backend needs the job's execution role ARN; see deploy/"
            )
        output = (self.request.output or "").rstrip("/")
        name = job_name_for(job.run_id)
        stopping = {"MaxRuntimeInSeconds": int(options.max_runtime_s)}
        if options.spot:
            # Spot needs MaxWaitTimeInSeconds > MaxRuntimeInSeconds; default to double the runtime.
            wait = int(options.max_wait_s or 2 * options.max_runtime_s)
            if wait <= options.max_runtime_s:
                raise PipelineError("--max-wait-s: must exceed --max-runtime-s for managed spot training")
            stopping["MaxWaitTimeInSeconds"] = wait
        environment = {"LORAPIPE_RUN_ID": job.run_id}
        if content_sha256:
            # Pipelines' step cache keys on the channel URI, not its objects; the content hash makes it honest.
            environment["LORAPIPE_CONTENT_SHA256"] = content_sha256
        return {
            "TrainingJobName": name,
            "AlgorithmSpecification": {
                "TrainingImage": options.image,
                "TrainingInputMode": "File",
                "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS],
            },
            "RoleArn": options.role_arn,
            "HyperParameters": hyperparameters_for(job),
            "InputDataConfig": [_channel(TRAIN_CHANNEL, job.dataset_url)]
            + ([_channel(CONFIG_CHANNEL, config_url)] if config_url else []),
            "OutputDataConfig": {"S3OutputPath": f"{output}/sagemaker/"},
            "ResourceConfig": {
                "InstanceType": options.instance_type,
                "InstanceCount": int(options.instance_count),
                "VolumeSizeInGB": int(options.volume_size_gb),
            },
            "StoppingCondition": stopping,
            "EnableManagedSpotTraining": bool(options.spot),
            # Same URI on a re-run of the same content, so a new job resumes from the old one's checkpoints.
            "CheckpointConfig": {
                "S3Uri": f"{output}/checkpoints/{job.cache_key[:16] or name}/",
                "LocalPath": CHECKPOINT_LOCAL_PATH,
            },
            "Environment": environment,
        }

    # -- the three phases ----------------------------------------------------------------------------------------
    def submit(self, job: TrainJob, log: RunLog) -> str:
        arguments = self.job_request(job, job.cache_key or None, config_url=self._stage_config(job, log))
        client = self._sagemaker()
        try:
            client.create_training_job(**arguments)
        except Exception as exc:
            raise PipelineError(
                f"sagemaker: the training job was refused ({aws_reason(exc)}); "
                "check the role, image, instance quota and region"
            ) from exc
        log.info(
            f"train: SageMaker job {arguments['TrainingJobName']} created "
            f"({self.options.instance_type}, spot={self.options.spot})"
        )
        return arguments["TrainingJobName"]

    def wait(self, name: str, log: RunLog, cancel: Cancellation) -> dict:
        client = self._sagemaker()
        last_secondary = None
        log_tokens: dict[str, str] = {}
        stop_sent = False
        while True:
            try:
                description = client.describe_training_job(TrainingJobName=name)
            except Exception as exc:
                raise PipelineError(f"sagemaker: cannot read job {name} ({aws_reason(exc)})") from exc
            secondary = description.get("SecondaryStatus")
            if secondary != last_secondary:
                log.info(f"train: {name} {description['TrainingJobStatus']} / {secondary}")
                last_secondary = secondary
            self._copy_log_lines(name, log, log_tokens)
            if description["TrainingJobStatus"] in FINAL_STATUSES:
                break
            if cancel.requested and not stop_sent:
                log.info(f"train: {self.stop(name)}")
                stop_sent = True
            cancel.event.wait(self.options.poll_interval_s)
        status = description["TrainingJobStatus"]
        reason = description.get("FailureReason")
        if status == "Failed":
            raise PipelineError(f"sagemaker: job {name} failed: {reason or 'no reason given'}")
        if status == "Stopped":
            raise PipelineError(f"sagemaker: job {name} was stopped ({reason or 'by request'})")
        return description

    def _stage_config(self, job: TrainJob, log: RunLog) -> str | None:
        """Upload an explicit --config TOML to `<output>/configs/<sha12>/` and return that prefix; None when the
        config is the dataset's own kohya-sdxl-config.toml (it travels in the dataset channel)."""
        from lorapipe.store import open_store  # fsspec/s3fs on first use

        shipped = Path(job.dataset_dir) / DATASET_CONFIG_NAME
        if job.config is None or Path(job.config).resolve() == shipped.resolve():
            return None
        digest = sha256_file(job.config)
        rel = f"configs/{digest[:12]}/{DATASET_CONFIG_NAME}"
        try:
            store = open_store(self.request.output or "", endpoint_url=self.request.s3_endpoint_url)
            store.upload_file(Path(job.config), rel)
            url = store.url_of(f"configs/{digest[:12]}") + "/"
        except StoreError as exc:
            raise PipelineError(f"--config {job.config}: cannot upload it for the SageMaker job ({exc})") from exc
        log.info(f"train: --config {job.config} sent as the '{CONFIG_CHANNEL}' channel ({url})")
        return url

    def stop(self, name: str) -> str:
        """StopTrainingJob; SageMaker sends the container SIGTERM and keeps what it saved in /opt/ml/checkpoints.

        Returns a line for the log; a job that is gone or already ending is not an error (cancel is idempotent).
        """
        try:
            self._sagemaker().stop_training_job(TrainingJobName=name)
        except Exception as exc:
            return f"stop of SageMaker job {name} not needed or refused ({aws_reason(exc)})"
        return f"stop requested for SageMaker job {name}; SageMaker sends SIGTERM, the trainer checkpoints"

    def stop_run(self, run_id: str) -> str:
        """Stop the job of run `run_id` (its worker is gone); a line for the log."""
        return self.stop(job_name_for(run_id))

    def fetch(self, description: dict, output_dir: Path, log: RunLog) -> Path:
        url = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if not url:
            raise PipelineError(f"sagemaker: job {description.get('TrainingJobName')} reports no model artifact")
        bucket, key = split_s3_url(url)
        output_dir.mkdir(parents=True, exist_ok=True)
        archive = output_dir.parent / "model.tar.gz"
        try:
            self._s3().download_file(bucket, key, str(archive))
        except Exception as exc:
            raise PipelineError(
                f"{url}: cannot download the job's model ({aws_reason(exc)}); check --s3-endpoint-url and credentials"
            ) from exc
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(output_dir, filter="data")  # "data" refuses absolute paths, links out, devices
        archive.unlink()
        log.info(f"train: model artifact {url} unpacked into {output_dir}")
        return output_dir

    def train(self, job: TrainJob, log: RunLog, cancel: Cancellation) -> Path:
        name = self.submit(job, log)
        description = self.wait(name, log, cancel)
        return self.fetch(description, job.output_dir, log)

    def _copy_log_lines(self, name: str, log: RunLog, tokens: dict[str, str]) -> None:
        """Append new CloudWatch lines of the job's streams to the run log; silent when logs are not there yet."""
        try:
            logs = self._boto_session().client("logs", endpoint_url=self.options.endpoint_url)
            streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/")["logStreams"]
            for stream in streams:
                stream_name = stream["logStreamName"]
                kwargs = {"logGroupName": LOG_GROUP, "logStreamName": stream_name, "startFromHead": True}
                if stream_name in tokens:
                    kwargs["nextToken"] = tokens[stream_name]
                page = logs.get_log_events(**kwargs)
                for event in page.get("events", []):
                    log.raw(event.get("message", ""))
                tokens[stream_name] = page.get("nextForwardToken", tokens.get(stream_name, ""))
        except Exception:  # logs are a convenience; the job status is what decides the run
            return


def _channel(name: str, url: str) -> dict:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": normalise_s3_prefix(url),
                "S3DataDistributionType": "FullyReplicated",
            }
        },
    }
