"""Everything decided before a model loads: config, dataset scan and its hash, steps and epochs, output paths,
sample prompts and the option checks sd-scripts makes. Bad input fails here, in seconds, naming key and file."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from lorapipe.config import load_train_config
from lorapipe.config.model import TrainConfig
from lorapipe.dataset.scan import DatasetScan, scan_dataset, steps_per_epoch, total_steps
from lorapipe.errors import ConfigError, DatasetError
from lorapipe.sdxl.load import resolve_base_model
from lorapipe.train.data import dataset_hash
from lorapipe.train.distributed import Processes, launch_seed, processes_from_env
from lorapipe.train.sampling import SamplePrompt, load_sample_prompts


@dataclass(frozen=True)
class RunPlan:
    """A validated run: what to train on, for how long, and where results go."""

    config: TrainConfig
    warnings: tuple[str, ...]
    scan: DatasetScan
    dataset_hash: str
    base_model: str
    output_dir: Path
    output_name: str
    total_steps: int
    epochs: int
    batches_per_epoch: int
    updates_per_epoch: int
    seed: int
    max_token_length: int
    sample_prompts: tuple[SamplePrompt, ...]
    processes: Processes = Processes()  # this process among the training processes (batches are shared out)

    @property
    def blueprint(self):
        return self.scan.blueprint


def plan_run(
    dataset_dir: Path,
    *,
    base_model: str | None = None,
    output_dir: Path | None = None,
    config_path: Path | None = None,
    overrides=(),
    processes: Processes | None = None,
) -> RunPlan:
    """Load and check config + dataset; raise ConfigError/DatasetError/ModelLoadError before any model loads.

    `processes`: default from the launcher's environment (RANK / WORLD_SIZE); each process trains on its share of
    an epoch's batches, so steps per epoch divide by the number of processes, as in sd-scripts."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(
            f"{dataset_dir}: dataset folder not found; pass the folder that holds the "
            "<repeats>_<name> image folders (and kohya-sdxl-config.toml)"
        )
    loaded = load_train_config(
        dataset_dir, config_path=config_path, overrides=tuple(overrides), output_dir=output_dir, base_model=base_model
    )
    cfg = loaded.config
    source = cfg.source or str(config_path or dataset_dir)
    model_spec = base_model or cfg.pretrained_model_name_or_path
    if not model_spec:
        raise ConfigError(f"{source}: pretrained_model_name_or_path is not set; pass --base-model PATH")
    resolve_base_model(str(model_spec))
    max_tokens = cfg.dataset.max_token_length  # the dataset blueprint's, checked and None -> 75 at load
    prompts = tuple(load_sample_prompts(Path(cfg.sample_prompts))) if cfg.sample_prompts else ()

    processes = processes or processes_from_env()
    if cfg.seed is not None:
        seed = cfg.seed
    elif processes.is_distributed:  # the processes must shuffle alike: one seed per launch, the same in each
        seed = launch_seed()
    else:
        seed = random.SystemRandom().randint(0, 2**31 - 1)
    scan = scan_dataset(cfg.dataset, training_seed=seed)
    if scan.has_errors:
        raise DatasetError(_dataset_report(scan, dataset_dir))
    steps, epochs = total_steps(
        scan,
        max_train_epochs=cfg.max_train_epochs,
        max_train_steps=cfg.max_train_steps,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_processes=processes.world,
    )
    batches = -(-steps_per_epoch(scan) // processes.world)  # per process, as sd-scripts' len(train_dataloader)
    updates = -(-batches // cfg.gradient_accumulation_steps)
    out = Path(output_dir or cfg.output_dir or "")
    if not str(output_dir or cfg.output_dir or ""):
        raise ConfigError(f"{source}: output_dir is not set; pass --output-dir DIR")
    _check_writable(out, source)
    warnings = tuple(loaded.warnings) + _validation_warnings(cfg, scan, source)
    return RunPlan(
        config=cfg,
        warnings=warnings,
        scan=scan,
        dataset_hash=dataset_hash(scan),
        base_model=str(model_spec),
        output_dir=out,
        output_name=cfg.output_name or "last",
        total_steps=steps,
        epochs=epochs,
        batches_per_epoch=batches,
        updates_per_epoch=updates,
        seed=int(seed),
        max_token_length=max_tokens,
        sample_prompts=prompts,
        processes=processes,
    )


def _validation_warnings(cfg, scan, source: str) -> tuple[str, ...]:
    split = max(table.validation_split for table in scan.blueprint.datasets())
    if not split and (cfg.validate_every_n_steps or cfg.validate_every_n_epochs or cfg.max_validation_steps):
        return (
            f"{source}: validate_every_n_steps/validate_every_n_epochs/max_validation_steps have no effect "
            "without validation_split (the fraction of images to hold out)",
        )
    if split and cfg.seed is None and scan.blueprint.validation_seed is None:
        return (
            f"{source}: validation_split without seed or validation_seed holds out different images each run "
            "(and a resumed run would see a different dataset); set validation_seed",
        )
    return ()


def _check_writable(folder: Path, source: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{source}: output_dir {folder} cannot be created ({exc.strerror}); "
            "pass --output-dir with a writable folder"
        ) from exc
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{source}: output_dir {folder} is not writable; pass --output-dir with a writable folder")


def _dataset_report(scan, dataset_dir: Path) -> str:
    """The dataset check's errors, one per line after a headline (LorapipeError text is the whole message)."""
    errors = [p for p in scan.problems if p.severity == "error"]
    lines = [f"{dataset_dir}: the dataset has {len(errors)} problem(s); fix them (see `lorapipe dataset check`):"]
    for problem in errors[:20]:
        lines.append(f"  - {problem.path}: {problem.reason}")
    return "\n".join(lines)
