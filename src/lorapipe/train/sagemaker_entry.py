"""SageMaker bring-your-own-container entry point.

`python -m lorapipe.train.sagemaker_entry [--opt-ml-root DIR] [train]`

Reads the training channel (`<root>/input/data/train`, Kohya layout, optional kohya-sdxl-config.toml on top; a
TOML in the optional `config` channel wins over it) and
`hyperparameters.json` (every value a string -> `--set key=value`), writes the LoRA and `train_summary.json` to
`<root>/model`, keeps state folders in `<root>/checkpoints` (SageMaker syncs them to S3) and resumes from the
newest complete one. SIGTERM (StopTrainingJob, spot reclaim) saves a state there and exits 143 (no failure
file). Any failure writes `<root>/output/failure` with the cause first.

On an instance with several GPUs (ml.g5.12xlarge, p4d) it trains one process per GPU (`$LORAPIPE_PROCESSES`
overrides the count): this process starts them under `torch.distributed.run`, passes SIGTERM on, and turns their
outcome into the contract's exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from lorapipe.container_contract import (
    OptMl,
    find_training_config,
    hyperparameters_to_overrides,
    read_hyperparameters,
    read_resource_config,
    require_channel,
    write_failure,
)
from lorapipe.errors import ConfigError, LorapipeError
from lorapipe.file_names import DATASET_CONFIG_NAME, TRAIN_SUMMARY_NAME
from lorapipe.train.distributed import torchrun_command

EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what a shell reports for a process stopped by SIGTERM
PROCESSES_ENV = "LORAPIPE_PROCESSES"  # training processes on this host (default: one per visible GPU)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lorapipe.train.sagemaker_entry")
    parser.add_argument("--opt-ml-root", help="SageMaker root (default: $LORAPIPE_OPT_ML or /opt/ml)")
    parser.add_argument("mode", nargs="?", default="train", help="SageMaker passes 'train'; ignored")
    args = parser.parse_args(argv)
    opt_ml = OptMl.resolve(args.opt_ml_root)
    try:
        if not read_resource_config(opt_ml).is_leader:
            print("not the leader host; lorapipe trains on one host, nothing to do here")
            return 0
        channel = require_channel(opt_ml, "train")
        processes = _process_count()
        if processes > 1 and "WORLD_SIZE" not in os.environ:
            return _run_processes(processes, opt_ml)
        overrides = hyperparameters_to_overrides(read_hyperparameters(opt_ml))
        checkpoints = opt_ml.checkpoints_dir
        checkpoints.mkdir(parents=True, exist_ok=True)
        result = _train(channel, find_training_config(opt_ml, channel), overrides, opt_ml.model_dir, checkpoints)
    except LorapipeError as exc:
        text = str(exc)
        write_failure(opt_ml, text.splitlines()[0], detail=text)
        print(f"lorapipe: error: {text}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - SageMaker needs a failure file for anything that goes wrong
        write_failure(opt_ml, f"internal error: {type(exc).__name__}: {exc}", detail=traceback.format_exc())
        traceback.print_exc()
        return 1
    if result.status == "finished" and result.lora_path is None:
        return 0  # one of several training processes, not the main one: it writes nothing
    if result.status != "finished":
        # A stop is not a failure (SageMaker reports the job as Stopped); no failure file, just say how to resume.
        print(
            f"training interrupted at step {result.steps_done}/{result.total_steps}; state saved in "
            f"{result.state_path}; start a job with the same checkpoint location to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(f"LoRA written to {result.lora_path}")
    return 0


def _train(channel: Path, config_path: Path | None, overrides, model_dir: Path, checkpoints: Path):
    # The trainer imports torch: only here, so the entry point answers (and fails clearly) without loading it.
    from lorapipe.sdxl.libraries import import_sdxl_libraries

    import_sdxl_libraries()  # as `lorapipe train` does; every torchrun child comes through here
    from lorapipe.train.checkpoints import newest_state
    from lorapipe.train.run import run_training

    resume = newest_state(checkpoints)
    with tempfile.TemporaryDirectory(prefix="lorapipe-config-") as scratch:
        if config_path is None:  # no TOML in the channel: hyperparameters alone configure the run
            config_path = Path(scratch) / DATASET_CONFIG_NAME
            config_path.write_text("", encoding="utf-8")
        return run_training(
            channel,
            output_dir=model_dir,
            config_path=config_path,
            overrides=overrides,
            resume=resume,
            state_dir=checkpoints,
            stop_signals=(signal.SIGTERM,),
            show_progress=False,
        )


def _process_count() -> int:
    """$LORAPIPE_PROCESSES, else the visible GPUs (1 on a CPU or single-GPU instance)."""
    chosen = os.environ.get(PROCESSES_ENV, "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise ConfigError(f"{PROCESSES_ENV}={chosen!r}: give a whole number of training processes (1 or more)")
        return int(chosen)
    import torch

    return max(1, torch.cuda.device_count())


def _run_processes(count: int, opt_ml) -> int:
    """Run `count` copies of this entry point under torch.distributed.run and report their outcome.

    The exit status follows what the main process recorded, not the launcher's own code: after a SIGTERM the
    launcher exits 1 even though every process stopped cleanly with state saved, which SageMaker must see as a
    stop (143), not a failure."""
    command = torchrun_command(count, "lorapipe.train.sagemaker_entry", "--opt-ml-root", str(opt_ml.root))
    summary = opt_ml.model_dir / TRAIN_SUMMARY_NAME
    summary.unlink(missing_ok=True)  # this job's output folder: only this run's summary may decide the status
    print(f"training in {count} processes (one per GPU)", flush=True)
    launcher = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, lambda *_: launcher.send_signal(signal.SIGTERM))
    try:
        code = launcher.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    status = _summary_status(summary)
    if status == "interrupted":
        return EXIT_INTERRUPTED
    if code == 0 and status == "finished":
        return 0
    if not opt_ml.failure_file.exists():
        write_failure(
            opt_ml, f"internal error: the training processes exited with status {code}", detail=" ".join(command)
        )
    return code or 1


def _summary_status(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
