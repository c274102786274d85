"""One run, step by step: validate -> train -> evaluate -> sample -> publish; the train step is cached by content hash.

Every failure becomes the run's status and one-line reason; nothing is published unless all earlier steps passed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lorapipe import __version__
from lorapipe.atomic import atomic_write_text
from lorapipe.errors import LorapipeError, PipelineError
from lorapipe.file_names import DATASET_CONFIG_NAME
from lorapipe.pipeline.artifact import Artifact, copy_artifact, find_artifact
from lorapipe.pipeline.backend import BACKENDS, TrainBackend, TrainJob
from lorapipe.pipeline.evaluate_stage import evaluate_artifact
from lorapipe.pipeline.hashing import ContentHasher, train_cache_key
from lorapipe.pipeline.publish import publish_artifact
from lorapipe.pipeline.records import RunStore
from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.pipeline.runlog import Cancellation, RunLog
from lorapipe.pipeline.validate import materialise_dataset, validate_dataset

# What the trainer writes inside each state folder (lorapipe.train.checkpoints); its presence marks a resumable run.
TRAIN_STATE_FILE = "train_state.json"


class RunCancelled(PipelineError):
    """The run was cancelled between or during steps."""


@dataclass(frozen=True)
class RunContext:
    run_id: str
    request: RunRequest
    home: PipelineHome
    records: RunStore
    log: RunLog
    cancel: Cancellation

    @property
    def run_dir(self) -> Path:
        return self.home.run_dir(self.run_id)


def execute_run(
    home: PipelineHome, run_id: str, cancel: Cancellation | None = None, backend: TrainBackend | None = None
) -> str:
    """Run every step of a recorded run in this process; return the final status."""
    records = RunStore(home.database)
    record = records.get(run_id)
    request = RunRequest.from_json(record.request)
    log = RunLog(record.run_dir / "run.log")
    ctx = RunContext(run_id, request, home, records, log, cancel or Cancellation())
    if not records.start_run(run_id, os.getpid()):
        log.info(f"run {run_id}: not started, it is already {records.get(run_id).status}")
        log.close()
        return records.get(run_id).status
    log.info(f"run {run_id}: {request.dataset} -> {request.output or 'run folder only'} ({request.backend})")
    current = "validate"  # the step a failure is charged to
    try:
        dataset_dir, dataset_url = _step_validate(ctx)
        current = "train"
        backend = backend or BACKENDS[request.backend].from_request(request)
        artifact = _step_train(ctx, dataset_dir, dataset_url, backend)
        current = "evaluate"
        artifact, evaluation = _step_evaluate(ctx, dataset_dir, artifact)
        current = "sample"
        _step_sample(ctx, artifact)
        current = "publish"
        _check_cancel(ctx)
        _step_publish(ctx, artifact, evaluation)
    except RunCancelled as exc:
        records.set_step(run_id, current, "cancelled", str(exc))
        records.finish_run(run_id, "cancelled", str(exc))
        log.info(f"run {run_id}: cancelled")
    except LorapipeError as exc:
        status = "cancelled" if ctx.cancel.requested else "failed"
        records.set_step(run_id, current, status, str(exc))
        records.finish_run(run_id, status, str(exc))
        log.info(f"run {run_id}: {status}: {exc}")
    except Exception as exc:  # a bug must still leave a finished record, not a run stuck in 'running'
        reason = f"internal error {type(exc).__name__}: {exc}"
        records.set_step(run_id, current, "failed", reason)
        records.finish_run(run_id, "failed", reason)
        log.info(f"run {run_id}: failed: {reason}")
        raise
    else:
        records.finish_run(run_id, "succeeded")
        log.info(f"run {run_id}: succeeded")
    finally:
        log.close()
    return records.get(run_id).status


def _check_cancel(ctx: RunContext) -> None:
    if ctx.cancel.requested or ctx.records.get(ctx.run_id).status == "cancelled":
        ctx.cancel.request()
        raise RunCancelled("cancelled by `lorapipe runs cancel`")


def _step_validate(ctx: RunContext) -> tuple[Path, str]:
    """The local dataset folder (checked) and the URL the backend reads it from (uploaded when it must be)."""
    ctx.records.set_step(ctx.run_id, "validate", "running")
    dataset_dir = materialise_dataset(ctx.request, ctx.home.dataset_cache, ctx.log)
    report = validate_dataset(dataset_dir, _config_for(ctx, dataset_dir), ctx.run_dir / "check.json", ctx.log)
    dataset_url = ctx.request.dataset
    if ctx.request.uploads_dataset:  # only after the check passed: a bad dataset never costs an upload
        dataset_url = _upload_dataset(ctx, dataset_dir)
        report = f"{report}; uploaded to {dataset_url}"
    ctx.records.set_step(ctx.run_id, "validate", "succeeded", report)
    return dataset_dir, dataset_url


def _upload_dataset(ctx: RunContext, dataset_dir: Path) -> str:
    from lorapipe.pipeline.dataset_upload import upload_dataset

    _check_cancel(ctx)
    result = upload_dataset(
        dataset_dir,
        output_url=ctx.request.output or "",
        hasher=ContentHasher(ctx.records),
        endpoint_url=ctx.request.s3_endpoint_url,
        log=ctx.log,
        should_stop=lambda: ctx.cancel.requested,
    )
    return result.url


def _config_for(ctx: RunContext, dataset_dir: Path) -> Path | None:
    """An explicit --config wins; else the recipe's toml shipped inside the dataset folder, if any."""
    if ctx.request.config:
        path = Path(ctx.request.config).expanduser()
        if not path.is_file():
            raise PipelineError(f"--config {path}: no such file; give the Kohya training TOML")
        return path
    shipped = dataset_dir / DATASET_CONFIG_NAME
    return shipped if shipped.is_file() else None


def _step_train(ctx: RunContext, dataset_dir: Path, dataset_url: str, backend: TrainBackend) -> Artifact:
    _check_cancel(ctx)
    ctx.records.set_step(ctx.run_id, "train", "running")
    config = _config_for(ctx, dataset_dir)
    hasher = ContentHasher(ctx.records)
    key = train_cache_key(
        dataset_hash=hasher.folder(dataset_dir),
        config_hash=hasher.file(config) if config else None,
        base_model_hash=hasher.path_or_name(ctx.request.base_model) if ctx.request.base_model else "from-config",
        overrides=ctx.request.overrides,
        trainer_version=f"lorapipe-{__version__}/{backend.name}",
    )
    ctx.records.update_run(ctx.run_id, cache_key=key)
    train_dir = ctx.run_dir / "train"
    cached = _reuse_cached(ctx, key, train_dir) if ctx.request.use_cache else None
    if cached is not None:
        return cached
    resume = _resumable_state(ctx, key) if ctx.request.use_cache else None
    job = TrainJob(
        ctx.run_id,
        dataset_dir,
        dataset_url,
        train_dir,
        ctx.request.base_model,
        config,
        ctx.request.overrides,
        key,
        resume,
    )
    folder = backend.train(job, ctx.log, ctx.cancel)
    _check_cancel(ctx)
    artifact = find_artifact(folder)
    ctx.records.update_run(ctx.run_id, artifact_dir=artifact.folder)
    ctx.records.set_step(ctx.run_id, "train", "succeeded", f"{artifact.lora.name} ({key[:12]})")
    return artifact


def _resumable_state(ctx: RunContext, key: str) -> Path | None:
    """The train folder of the newest interrupted run of the same content that saved a training state."""
    for previous in ctx.records.find_interrupted(key, exclude_run=ctx.run_id):
        folder = previous.run_dir / "train"
        if any(folder.glob(f"*/{TRAIN_STATE_FILE}")):
            ctx.log.info(f"train: resuming from the state run {previous.id} saved when it stopped")
            return folder
    return None


def _reuse_cached(ctx: RunContext, key: str, train_dir: Path) -> Artifact | None:
    previous = ctx.records.find_cached(key, exclude_run=ctx.run_id)
    if previous is None or previous.artifact_dir is None or not previous.artifact_dir.is_dir():
        return None
    try:
        artifact = copy_artifact(find_artifact(previous.artifact_dir), train_dir)
    except LorapipeError as exc:  # a damaged cache entry means training again, never publishing it
        ctx.log.info(f"train: cached artifact of run {previous.id} unusable ({exc}); training again")
        return None
    ctx.records.update_run(ctx.run_id, artifact_dir=artifact.folder)
    ctx.records.set_step(ctx.run_id, "train", "cached", f"same content as run {previous.id} ({key[:12]})")
    ctx.log.info(f"train: dataset, config and base model unchanged since run {previous.id}; reusing its LoRA")
    return artifact


def _step_evaluate(ctx: RunContext, dataset_dir: Path, artifact: Artifact) -> tuple[Artifact, dict | None]:
    """Score every checkpoint and pick the one to publish (lorapipe.pipeline.evaluate_stage)."""
    _check_cancel(ctx)
    ctx.records.set_step(ctx.run_id, "evaluate", "running")
    outcome = evaluate_artifact(
        artifact,
        ctx.request.evaluate,
        dataset_dir=dataset_dir,
        base_model=ctx.request.base_model,
        out_dir=ctx.run_dir / "eval",
        log=ctx.log,
    )
    ctx.records.set_step(ctx.run_id, "evaluate", "succeeded" if outcome.manifest else "skipped", outcome.detail)
    return outcome.artifact, outcome.manifest


def _step_sample(ctx: RunContext, artifact: Artifact) -> None:
    """The trainer renders sample images with the trained LoRA (Kohya's sample_prompts); check they exist."""
    _check_cancel(ctx)
    if artifact.samples:
        ctx.records.set_step(ctx.run_id, "sample", "succeeded", f"{len(artifact.samples)} images")
    else:
        ctx.records.set_step(ctx.run_id, "sample", "skipped", "no sample images (set sample_prompts in the config)")


def _step_publish(ctx: RunContext, artifact: Artifact, evaluation: dict | None = None) -> None:
    ctx.records.set_step(ctx.run_id, "publish", "running")
    lora_dir = Path(ctx.request.lora_dir).expanduser() if ctx.request.lora_dir else ctx.home.default_lora_dir
    lora_name = ctx.request.lora_name or artifact.final_lora.stem  # the run's name, whichever file is published
    result = publish_artifact(
        artifact,
        run_id=ctx.run_id,
        output_url=ctx.request.output,
        lora_dir=lora_dir,
        lora_name=lora_name,
        endpoint_url=ctx.request.s3_endpoint_url,
        log=ctx.log,
        evaluation=evaluation,
    )
    if ctx.request.deploy_endpoint:
        from lorapipe.pipeline.deploy_step import deploy_published

        result["deploy"] = deploy_published(
            ctx.request, Path(result["lora_path"]), lora_name, result.get("output_prefix"), ctx.log
        )
    atomic_write_text(ctx.run_dir / "publish.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    ctx.records.set_step(ctx.run_id, "publish", "succeeded", result.get("output_prefix") or result["lora_path"])
