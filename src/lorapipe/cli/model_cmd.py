"""`lorapipe model ...`: build random-weight SDXL models (tiny for tests and the demo, full for benchmarks)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="build or inspect SDXL base models")
    commands = model.add_subparsers(dest="model_command", metavar="MODEL_COMMAND", required=True)

    tiny = commands.add_parser(
        "make-tiny",
        help="write an SDXL-architecture pipeline folder with seeded random weights",
        description="Write a diffusers-format SDXL pipeline with seeded random weights and the real CLIP "
        "tokenizers. The tiny preset builds in seconds on a CPU; --preset full builds the SDXL 1.0 base "
        "architecture (about 3.5 B parameters) for real-size benchmarks.",
    )
    tiny.add_argument("out", type=Path, help="output folder (must not exist or be empty)")
    tiny.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    tiny.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--single-file",
        type=Path,
        metavar="FILE",
        help="also write the model as one .safetensors checkpoint in the original SGM layout",
    )
    tiny.set_defaults(handler=_make_tiny)

    info = commands.add_parser("info", help="say what a --base-model value is (folder, single file or hub id)")
    info.add_argument("base_model")
    info.set_defaults(handler=_info)


def _make_tiny(args: argparse.Namespace) -> int:
    from lorapipe.errors import ModelLoadError

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelLoadError(f"{out}: already exists and is not an empty folder; choose a new output folder")
    if args.single_file and args.single_file.suffix != ".safetensors":
        raise ModelLoadError(f"{args.single_file}: single-file checkpoints are written as .safetensors")
    print(f"building the {args.preset} SDXL architecture ({args.dtype}, seed {args.seed}) ...", flush=True)
    from lorapipe.sdxl.factory import make_pipeline_folder

    make_pipeline_folder(out, preset=args.preset, dtype=args.dtype, seed=args.seed)
    print(f"wrote diffusers pipeline: {out}")
    if args.single_file:
        from lorapipe.sdxl.load import load_sdxl_pipeline
        from lorapipe.sdxl.single_file import write_single_file

        write_single_file(load_sdxl_pipeline(str(out), dtype=args.dtype), args.single_file)
        print(f"wrote single-file checkpoint (SGM layout): {args.single_file}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from lorapipe.sdxl.load import resolve_base_model

    source = resolve_base_model(args.base_model)
    kinds = {
        "diffusers": "diffusers SDXL folder",
        "single_file": "single-file SDXL checkpoint (SGM layout)",
        "hub": "hub id (downloaded on first use)",
        "random": "SDXL architecture with seeded random weights, built in memory (benchmarks)",
    }
    print(f"{source.name if source.kind == 'random' else source.location}: {kinds[source.kind]}")
    return 0
