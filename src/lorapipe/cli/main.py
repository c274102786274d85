"""Entry point of the `lorapipe` console script."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lorapipe import __version__
from lorapipe.errors import LorapipeError

# Command-group modules, each with `register(subparsers)`. Order is the order shown in --help.
COMMAND_MODULES = (
    "lorapipe.cli.dataset_cmd",
    "lorapipe.cli.config_cmd",
    "lorapipe.cli.train_cmd",
    "lorapipe.cli.generate_cmd",
    "lorapipe.cli.eval_cmd",
    "lorapipe.cli.serve_cmd",
    "lorapipe.cli.deploy_cmd",
    "lorapipe.cli.pipeline_cmd",
    "lorapipe.cli.model_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorapipe",
        description="Turn photos of one subject into an SDXL LoRA, then generate new images of it.",
    )
    parser.add_argument("--version", action="version", version=f"lorapipe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module must surface
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Library warnings stay on (their default level): silencing them for every command hid that part of a file
    # was ignored. Progress bars of model loading are turned off where models load (generate/quiet.py).
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except LorapipeError as exc:
        print(f"lorapipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lorapipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
