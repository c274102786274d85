"""The Kohya-key override flag (`--set KEY=VALUE`) shared by `train`, `config check` and `pipeline run`."""

from __future__ import annotations

import argparse


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE`, repeatable, collected in `args.overrides` (read by config/: a TOML literal, else text)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one Kohya key, e.g. --set max_train_steps=100 (value read as a TOML literal, else as text); "
        "repeatable",
    )
