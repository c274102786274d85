"""`lorapipe dataset ...`: check a Kohya dataset before paying for a GPU, or write the sample dataset.

Only argparse lives here; implementations are imported inside the handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("dataset", help="check Kohya datasets (folders or s3:// buckets), write a sample")
    commands = group.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")
    group.set_defaults(handler=lambda args: _print_help(group))

    check = commands.add_parser(
        "check",
        help="report subsets, counts, steps, buckets, captions and every problem with its file",
        description="Check a Kohya dataset the way training will read it. Exit 1 when there are errors.",
    )
    check.add_argument("path", metavar="PATH_OR_URL", help="dataset root, NNNN-dataset folder, or s3://bucket/prefix")
    check.add_argument("--config", metavar="TOML", help="Kohya training TOML (default: the dataset's own)")
    check.add_argument("--dataset-config", metavar="TOML", help="Kohya --dataset_config TOML ([[datasets]])")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    check.add_argument("--cache-dir", metavar="DIR", help="local cache for s3:// datasets")
    check.add_argument("--no-tokens", action="store_true", help="skip counting caption tokens with the CLIP tokenizer")
    check.add_argument("--hashes", action="store_true", help="hash every image to find byte-identical duplicates "
                       "(default: only files of equal size are hashed)")
    check.set_defaults(handler=_run_check)

    sample = commands.add_parser("make-sample", help="write the procedurally drawn 'dwjz toy' sample dataset")
    sample.add_argument("out", metavar="OUT", help="folder to create OUT/0001-dataset in")
    sample.add_argument("--force", action="store_true", help="replace an existing OUT/0001-dataset")
    sample.set_defaults(handler=_run_make_sample)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _run_make_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorapipe.dataset.sample import write_sample_dataset

    dataset_dir = write_sample_dataset(Path(args.out), overwrite=args.force)
    print(dataset_dir)
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorapipe.dataset.check import check_dataset, render_text

    report = check_dataset(
        args.path,
        None,
        config_path=Path(args.config) if args.config else None,
        dataset_config_path=Path(args.dataset_config) if args.dataset_config else None,
        endpoint_url=args.s3_endpoint,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        count_tokens=not args.no_tokens,
        hash_all=args.hashes,
    )
    if args.json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        sys.stdout.write(render_text(report))
    return 1 if report.has_errors else 0
