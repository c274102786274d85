"""`lorapipe train DATASET_DIR --base-model PATH [...]`: train a Kohya-format SDXL LoRA.

Only argparse lives here; the trainer is imported inside the handler so `--help` stays fast.
"""

from __future__ import annotations

import argparse

from lorapipe.cli.config_args import add_override_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an SDXL LoRA (Kohya format) from a dataset folder",
        description="Read DATASET_DIR/kohya-sdxl-config.toml (or --config) and the <repeats>_<name> image folders "
        "beside it, train a LoRA and write <output_name>.safetensors plus train_summary.json.",
    )
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", help="folder with the Kohya config and image folders")
    parser.add_argument(
        "--base-model",
        metavar="PATH",
        help="SDXL base: diffusers folder, single-file checkpoint or hub id "
        "(default: pretrained_model_name_or_path of the config)",
    )
    parser.add_argument("--output-dir", metavar="DIR", help="where the LoRA, samples and summary go")
    parser.add_argument("--config", metavar="FILE", help="Kohya training TOML (default: DATASET_DIR's own)")
    add_override_argument(parser)
    parser.add_argument("--resume", metavar="DIR", help="continue from a state folder written with save_state")
    parser.add_argument("--state-dir", metavar="DIR", help="where state folders go (default: the output folder)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (step lines still print)")
    parser.add_argument(
        "--processes",
        metavar="N",
        type=int,
        default=1,
        help="train in N processes, one per GPU, each on its share of the batches (runs itself "
        "under torch.distributed.run; `accelerate launch --multi_gpu --num_processes N -m lorapipe "
        "train` works too)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import os
    import signal
    import sys

    if args.processes < 1:
        print("lorapipe train: --processes must be 1 or more", file=sys.stderr)
        return 2
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch(args)  # does not return

    from lorapipe.sdxl.libraries import import_sdxl_libraries

    import_sdxl_libraries()
    from lorapipe.train.run import run_training

    result = run_training(
        args.dataset_dir,
        base_model=args.base_model,
        output_dir=args.output_dir,
        config_path=args.config,
        overrides=tuple(args.overrides),
        resume=args.resume,
        state_dir=args.state_dir,
        stop_signals=(signal.SIGTERM,),
        show_progress=not args.no_progress,
    )
    if result.lora_path is None and result.status == "finished":
        return 0  # not the main process: it wrote nothing and prints nothing
    if result.status != "finished":
        print(
            f"training stopped at step {result.steps_done}/{result.total_steps}; state saved in "
            f"{result.state_path}; continue with --resume {result.state_path}"
        )
        return 3
    print(result.lora_path)
    return 0


def _relaunch(args: argparse.Namespace) -> None:
    """Replace this process with `torch.distributed.run` starting N copies of the same command (same pid, so a
    SIGTERM sent to us reaches the launcher, which passes it to every copy)."""
    import os
    import sys

    from lorapipe.train.distributed import torchrun_command

    command = torchrun_command(args.processes, "lorapipe", "train", args.dataset_dir)
    for flag, value in (
        ("--base-model", args.base_model),
        ("--output-dir", args.output_dir),
        ("--config", args.config),
        ("--resume", args.resume),
        ("--state-dir", args.state_dir),
    ):
        if value:
            command += [flag, str(value)]
    for override in args.overrides:
        command += ["--set", override]
    if args.no_progress:
        command.append("--no-progress")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
