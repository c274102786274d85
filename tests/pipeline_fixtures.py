"""Helpers for the pipeline tests: a real (tiny) LoRA-shaped safetensors artifact, buckets on the session's
SeaweedFS, moto's SageMaker with a stoppable job life cycle, and a real worker process running under moto."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest


def write_artifact(folder: Path, name: str = "dwjz_toy", samples: int = 2, seed: int = 0) -> Path:
    """A trainer-shaped output folder: <name>.safetensors (Kohya key names), train_summary.json, sample/*.png."""
    from PIL import Image
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": rng.standard_normal((4, 32), np.float32),
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": rng.standard_normal((32, 4), np.float32),
        "lora_unet_down_blocks_1_attentions_0_proj_in.alpha": np.array(1.0, np.float32),
    }
    save_file(tensors, str(folder / f"{name}.safetensors"), metadata={"ss_output_name": name})
    (folder / "train_summary.json").write_text(json.dumps({"output_name": name, "steps": 2}))
    if samples:
        (folder / "sample").mkdir(exist_ok=True)
        for index in range(samples):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "sample" / f"{name}_{index:02d}.png")
    return folder


# -- SageMaker through moto, S3 through the real SeaweedFS -----------------------------------------------------------
ROLE = "arn:aws:iam::123456789012:role/lorapipe-training"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/lorapipe-training:latest"


@pytest.fixture
def aws(seaweed_s3, monkeypatch):
    """moto answers SageMaker calls; S3 calls carry an explicit endpoint and reach the real SeaweedFS.

    Yields (server, sagemaker client). Import it into a test module to use it.
    """
    moto = pytest.importorskip("moto")
    with moto.mock_aws():
        # mock_aws sets fake credentials; SeaweedFS needs its own (moto does not check them for SageMaker)
        # (AWS_ENDPOINT_URL stays unset: it would send the SageMaker calls to SeaweedFS as well)
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed_s3.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed_s3.secret_key)
        import boto3

        yield seaweed_s3, boto3.client("sagemaker", region_name="us-east-1")


def sagemaker_options(**changes):
    from lorapipe.pipeline.request import SageMakerOptions

    return SageMakerOptions(
        **{"image": IMAGE, "role_arn": ROLE, "region": "us-east-1", "poll_interval_s": 0.05, **changes}
    )


def fresh_bucket(server, stem: str) -> str:
    """A fresh bucket per test: the SeaweedFS server lives for the whole session."""
    import uuid

    name = f"{stem}-{uuid.uuid4().hex[:8]}"
    server.client().create_bucket(Bucket=name)
    return name


def model_tarball(tmp_path: Path) -> bytes:
    """What SageMaker uploads at the end of a job: /opt/ml/model as model.tar.gz."""
    import io
    import tarfile

    model_dir = write_artifact(tmp_path / "opt-ml-model")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
    return buffer.getvalue()


@contextmanager
def moto_jobs_run_until_stopped():
    """Give moto's SageMaker the job life cycle a cancel needs (moto 5 finishes every job at once and has no
    StopTrainingJob): jobs stay InProgress/Training until StopTrainingJob moves them to Stopping, and the describe
    after that one reports Stopped. Only moto's emulation is changed, never lorapipe's code."""
    from moto.core.responses import EmptyResult
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    original_create = SageMakerModelBackend.create_training_job
    original_describe = SageMakerModelBackend.describe_training_job

    def create_training_job(self, *args, **kwargs):
        job = original_create(self, *args, **kwargs)
        job.training_job_status, job.secondary_status = "InProgress", "Training"
        return job

    def describe_training_job(self, training_job_name):
        response = original_describe(self, training_job_name)
        job = self.training_jobs[training_job_name]
        if job.training_job_status == "Stopping":  # the container took its SIGTERM; next describe sees Stopped
            job.training_job_status, job.secondary_status = "Stopped", "Stopped"
        return response

    def stop_training_job(self):
        name = self._get_param("TrainingJobName")
        job = self.sagemaker_backend.training_jobs.get(name)
        if job is None:
            raise ValidationError(f"Could not find training job '{name}'.")
        if job.training_job_status != "InProgress":
            raise ValidationError(f"The job {name} is {job.training_job_status}; only InProgress jobs can be stopped.")
        job.training_job_status, job.secondary_status = "Stopping", "Stopping"
        return EmptyResult()

    SageMakerModelBackend.create_training_job = create_training_job
    SageMakerModelBackend.describe_training_job = describe_training_job
    SageMakerResponse.stop_training_job = stop_training_job
    try:
        yield
    finally:
        SageMakerModelBackend.create_training_job = original_create
        SageMakerModelBackend.describe_training_job = original_describe
        del SageMakerResponse.stop_training_job


WORKER_S3_KEYS_ENV = ("LORAPIPE_TEST_S3_ACCESS_KEY", "LORAPIPE_TEST_S3_SECRET_KEY")


def start_worker_under_moto(home, run_id: str, server) -> int:
    """`start_detached` for tests: the real worker (own session, SIGTERM handler) in a process whose SageMaker is
    moto with `moto_jobs_run_until_stopped`; S3 stays the real SeaweedFS. Returns the worker's pid."""
    import os
    import subprocess
    import sys

    from lorapipe.pipeline.records import RunStore

    repo = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(repo),
        WORKER_S3_KEYS_ENV[0]: server.access_key,
        WORKER_S3_KEYS_ENV[1]: server.secret_key,
    }
    env.pop("AWS_ENDPOINT_URL", None)  # it would send the SageMaker calls to SeaweedFS as well
    with open(home.run_dir(run_id) / "worker.out", "ab") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.pipeline_fixtures", str(home.root), run_id],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=repo,
            env=env,
        )
    RunStore(home.database).update_run(run_id, pid=worker.pid)
    return worker.pid


def _worker_main(argv: list[str]) -> int:
    import os

    import moto

    from lorapipe.pipeline.worker import main

    home, run_id = argv
    with moto.mock_aws(), moto_jobs_run_until_stopped():
        # mock_aws puts fake keys in the environment; S3 (SeaweedFS) needs the real ones
        os.environ["AWS_ACCESS_KEY_ID"] = os.environ[WORKER_S3_KEYS_ENV[0]]
        os.environ["AWS_SECRET_ACCESS_KEY"] = os.environ[WORKER_S3_KEYS_ENV[1]]
        return main(["--home", home, run_id])


if __name__ == "__main__":
    import sys

    sys.exit(_worker_main(sys.argv[1:]))
