"""`lorapipe config ...`: validate a Kohya training TOML and show the effective config, before any model loads.

Only argparse lives here; implementations are imported inside the handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse

from lorapipe.cli.config_args import add_override_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("config", help="check Kohya training configs; list the keys lorapipe knows")
    commands = group.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    group.set_defaults(handler=lambda args: _print_help(group))

    check = commands.add_parser(
        "check",
        help="print the effective config and every warning; exit 1 on errors",
        description="Validate a Kohya training TOML (flat or sectioned) the way `lorapipe train` reads it: "
        "unknown keys, wrong types, impossible values and Kohya's cross-option rules. No model is loaded.",
    )
    check.add_argument("file", metavar="FILE", help="Kohya training TOML, e.g. NNNN-dataset/kohya-sdxl-config.toml")
    check.add_argument("--dataset-dir", metavar="DIR", help="dataset folder (default: the folder of FILE)")
    add_override_argument(check)
    check.add_argument("--output-dir", metavar="DIR", help="output folder, as `lorapipe train --output-dir`")
    check.add_argument("--base-model", metavar="MODEL", help="base model, as `lorapipe train --base-model`")
    check.add_argument("--json", action="store_true", help="print {ok, errors, warnings, config} as JSON")
    check.set_defaults(handler=_run_check)

    keys = commands.add_parser("keys", help="list every Kohya key with what lorapipe does with it")
    keys.add_argument("--json", action="store_true", help="print the key table as JSON")
    keys.set_defaults(handler=_run_keys)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from lorapipe.config.report import check_file

    return check_file(
        args.file,
        dataset_dir=args.dataset_dir,
        overrides=args.overrides,
        output_dir=args.output_dir,
        base_model=args.base_model,
        as_json=args.json,
    )


def _run_keys(args: argparse.Namespace) -> int:
    from lorapipe.config.report import print_keys

    return print_keys(as_json=args.json)
