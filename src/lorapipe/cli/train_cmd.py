"""`lorapipe train DATASET_DIR --base-model PATH [...]`: train a Kohya-format SDXL LoRA.

Only argparse lives here; the trainer is imported inside the handler so `--help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an SDXL LoRA (Kohya format) from a dataset folder",
        description="Read DATASET_DIR/kohya-sdxl-config.toml (or --config) and the <repeats>_<name> image folders "
        "beside it, train a LoRA and write <output_name>.safetensors plus train_summary.json.",
    )
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", help="folder with the Kohya config and image folders")
    parser.add_argument("--base-model", metavar="PATH",
                        help="SDXL base: diffusers folder, single-file checkpoint or hub id "
                        "(default: pretrained_model_name_or_path of the config)")
    parser.add_argument("--output-dir", metavar="DIR", help="where the LoRA, samples and summary go")
    parser.add_argument("--config", metavar="FILE", help="Kohya training TOML (default: DATASET_DIR's own)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                        help="override one Kohya key, e.g. --set max_train_steps=100 (repeatable)")
    parser.add_argument("--resume", metavar="DIR", help="continue from a state folder written with save_state")
    parser.add_argument("--state-dir", metavar="DIR", help="where state folders go (default: the output folder)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (step lines still print)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import signal

    from lorapipe.train.run import run_training

    result = run_training(
        args.dataset_dir, base_model=args.base_model, output_dir=args.output_dir, config_path=args.config,
        overrides=tuple(args.overrides), resume=args.resume, state_dir=args.state_dir,
        stop_signals=(signal.SIGTERM,), show_progress=not args.no_progress,
    )
    if result.status != "finished":
        print(f"training stopped at step {result.steps_done}/{result.total_steps}; state saved in "
              f"{result.state_path}; continue with --resume {result.state_path}")
        return 3
    print(result.lora_path)
    return 0
