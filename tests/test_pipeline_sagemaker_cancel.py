"""`lorapipe runs cancel` on a sagemaker-backend run: StopTrainingJob reaches SageMaker (moto, with the job life
cycle of `moto_jobs_run_until_stopped`), the run ends cancelled with nothing published, and a job whose worker is
gone is stopped by the cancel itself."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from lorapipe.pipeline.backend import TrainJob
from lorapipe.pipeline.records import RunStore
from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.pipeline.runlog import RunLog
from lorapipe.pipeline.runs import cancel_run, create_run, follow_log
from lorapipe.pipeline.sagemaker_backend import SageMakerBackend, job_name_for
from tests.pipeline_fixtures import (
    fresh_bucket,
    moto_jobs_run_until_stopped,
    sagemaker_options,
    start_worker_under_moto,
)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_cancel_stops_the_training_job_and_the_run_ends_cancelled(seaweed_s3, sample_dataset_dir, tmp_path):
    out = fresh_bucket(seaweed_s3, "out")
    home = PipelineHome.resolve(tmp_path / "home")
    request = RunRequest(
        dataset=str(sample_dataset_dir),
        output=f"s3://{out}/models",
        backend="sagemaker",
        s3_endpoint_url=seaweed_s3.endpoint_url,
        lora_dir=str(tmp_path / "loras"),
        sagemaker=sagemaker_options(),
    )
    record = create_run(request, home)
    worker_pid = start_worker_under_moto(home, record.id, seaweed_s3)
    log_path = home.run_dir(record.id) / "run.log"
    job_name = job_name_for(record.id)
    _wait_for(lambda: f"{job_name} InProgress / Training" in log_path.read_text(), 90, "the job to be training")

    assert cancel_run(home, record.id).status == "cancelled"
    deadline = time.monotonic() + 60
    follow_log(home, record.id, io.StringIO(), poll_s=0.1, should_stop=lambda: time.monotonic() > deadline)
    with pytest.raises(ProcessLookupError):  # follow_log returned because the worker ended (and reaped it)
        os.kill(worker_pid, 0)

    log = log_path.read_text()
    assert f"stop requested for SageMaker job {job_name}" in log
    assert f"{job_name} Stopping / Stopping" in log and f"{job_name} Stopped / Stopped" in log
    finished = RunStore(home.database).get(record.id)
    assert finished.status == "cancelled"
    assert [s.status for s in finished.steps] == ["succeeded", "cancelled", "pending", "pending", "pending"]
    assert seaweed_s3.client().list_objects_v2(Bucket=out, Prefix=f"models/{record.id}/").get("KeyCount", 0) == 0
    assert not (tmp_path / "loras").exists()


def test_cancel_stops_the_job_of_a_worker_that_is_gone(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    home = PipelineHome.resolve(tmp_path / "home")
    request = RunRequest(
        dataset="s3://data/0001-dataset/", output="s3://out/models", backend="sagemaker", sagemaker=sagemaker_options()
    )
    record = create_run(request, home)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    RunStore(home.database).start_run(record.id, gone.pid)  # a worker that died (kill -9, reboot) mid-job
    with moto.mock_aws(), moto_jobs_run_until_stopped():
        import boto3

        sagemaker = boto3.client("sagemaker", region_name="us-east-1")
        job = TrainJob(record.id, tmp_path, request.dataset, tmp_path / "train", None, None, (), "a" * 64)
        scratch = RunLog(tmp_path / "submit.log")
        name = SageMakerBackend(request).submit(job, scratch)
        scratch.close()
        assert sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"

        assert cancel_run(home, record.id).status == "cancelled"
        assert sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Stopping"
        assert sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Stopped"
    log = (home.run_dir(record.id) / "run.log").read_text()
    assert f"worker {gone.pid} is gone; stop requested for SageMaker job {name}" in log
