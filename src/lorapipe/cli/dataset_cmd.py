"""`lorapipe dataset ...`: turn photos into a Kohya dataset, caption it, check it before paying for a GPU.

Only argparse lives here; implementations are imported inside the handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("dataset", help="prepare and caption photos, check Kohya datasets, write a sample")
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
    check.add_argument(
        "--hashes",
        action="store_true",
        help="hash every image to find byte-identical duplicates (default: only files of equal size are hashed)",
    )
    check.set_defaults(handler=_run_check)

    _register_prepare(commands)
    _register_caption(commands)

    sample = commands.add_parser("make-sample", help="write the procedurally drawn 'dwjz toy' sample dataset")
    sample.add_argument("out", metavar="OUT", help="folder to create OUT/0001-dataset in")
    sample.add_argument("--force", action="store_true", help="replace an existing OUT/0001-dataset")
    sample.set_defaults(handler=_run_make_sample)


def _register_prepare(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser(
        "prepare",
        help="copy a folder of photos into a Kohya dataset with a preset config (originals untouched)",
        description="Copy the usable photos of PHOTOS into OUT/<repeats>_<trigger> <class>/ (HEIC/AVIF converted, "
        "EXIF rotation applied, broken files and duplicates left out) and write OUT/kohya-sdxl-config.toml from a "
        "preset, with repeats and epochs chosen for the number of photos.",
    )
    prepare.add_argument("photos", metavar="PHOTOS", help="folder of photos (JPEG, PNG, WebP, HEIC, AVIF, ...)")
    prepare.add_argument("--trigger", required=True, help="one rare word that will mean your subject, e.g. sks")
    prepare.add_argument("--class", dest="class_name", default="", help="what the subject is, e.g. 'dog', 'woman'")
    prepare.add_argument(
        "--out", metavar="DIR", help="dataset folder to create (default: the next free NNNN-dataset beside PHOTOS)"
    )
    prepare.add_argument(
        "--preset",
        default="subject",
        help="subject, face, style, or the path of your own Kohya TOML (default: subject)",
    )
    prepare.add_argument("--steps", type=int, help="step budget instead of the preset's max_train_steps")
    prepare.add_argument(
        "--base-model",
        metavar="PATH_OR_ID",
        help="write pretrained_model_name_or_path (default: the preset's, SDXL 1.0 base on the hub)",
    )
    prepare.set_defaults(handler=_run_prepare)

    presets = commands.add_parser("presets", help="list the training presets, or print one to copy and edit")
    presets.add_argument("name", nargs="?", help="preset to print (subject, face, style)")
    presets.set_defaults(handler=_run_presets)


def _register_caption(commands: argparse._SubParsersAction) -> None:
    caption = commands.add_parser(
        "caption",
        help="write a caption file for every image with BLIP, Florence-2 or the WD14 tagger",
        description="Caption every image of a Kohya dataset folder: '<trigger> <class>, <caption>' into "
        "<image><caption_extension>. Existing captions are kept unless --overwrite.",
    )
    caption.add_argument("dataset", metavar="DATASET", help="dataset folder (the one holding kohya-sdxl-config.toml)")
    caption.add_argument(
        "--captioner",
        default="blip",
        help="blip (sentences), florence2 (detailed sentences) or wd14 (tags); default blip",
    )
    caption.add_argument(
        "--captioner-model",
        metavar="PATH_OR_ID",
        help="local folder or hub id of the model (default: the family's usual checkpoint)",
    )
    caption.add_argument("--overwrite", action="store_true", help="replace existing captions")
    caption.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    caption.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    caption.set_defaults(handler=_run_caption)

    tiny = commands.add_parser("make-tiny-captioner", help="write a tiny random-weight captioner (tests, demos)")
    tiny.add_argument("out", metavar="OUT", help="folder to create")
    tiny.add_argument("--captioner", default="blip", help="blip, florence2 or wd14")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_run_make_tiny_captioner)


def _progress_bar(description: str, unit: str):
    """A tqdm bar driven by `progress(done, total)` callbacks; close it with `.close()`."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, total=0)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    update.close = bar.close  # type: ignore[attr-defined]
    return update


def _run_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorapipe.dataset.names import printable
    from lorapipe.dataset.prepare import prepare_dataset

    bar = _progress_bar("photos", "photo")
    try:
        result = prepare_dataset(
            Path(args.photos),
            Path(args.out) if args.out else None,
            trigger=args.trigger,
            class_name=args.class_name,
            preset=args.preset,
            steps=args.steps,
            progress=bar,
            base_model=args.base_model,
        )
    finally:
        bar.close()
    for photo in result.kept:
        if photo.note != "copied":
            print(f"{printable(photo.source)}: {photo.note}")
    for skipped in result.skipped:
        print(f"left out {printable(skipped.source)}: {skipped.reason}")
    errors = [p for p in result.problems if p.severity == "error"]
    for problem in errors:
        print(f"ERROR   {printable(problem.path)}: {problem.reason}")
    dataset = printable(result.dataset_dir)
    print(
        f"{len(result.kept)} photos ({len(result.converted)} converted), {len(result.skipped)} left out -> "
        f"{printable(result.subset_dir)}"
    )
    print(
        f"preset {result.preset}: {result.repeats} repeats x {result.epochs} epochs = {result.expected_steps} "
        f"steps; config {printable(result.config_path)}"
    )
    print(
        f"next: lorapipe dataset caption {_quoted(dataset)}   (then: lorapipe dataset check {_quoted(dataset)}; "
        f"lorapipe train {_quoted(dataset)})"
    )
    return 1 if errors else 0


def _quoted(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _run_presets(args: argparse.Namespace) -> int:
    from lorapipe.dataset.preset import PRESET_NAMES, load_preset

    if args.name:
        sys.stdout.write(load_preset(args.name).text)
        return 0
    for name in PRESET_NAMES:
        preset = load_preset(name)
        summary = preset.text.splitlines()[0].split(": ", 1)[-1]  # the first comment line says what it is for
        print(f"{name:8} {preset.step_budget:>5} steps  {summary}")
    return 0


def _run_caption(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorapipe.dataset.caption import caption_dataset
    from lorapipe.dataset.names import printable

    bar = _progress_bar("captions", "image")
    try:
        summary = caption_dataset(
            Path(args.dataset),
            captioner=args.captioner,
            model=args.captioner_model,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            progress=bar,
            device=args.device,
        )
    finally:
        bar.close()
    for failure in summary.failed:
        print(f"failed {printable(failure.path)}: {failure.reason}")
    hint = " (--overwrite replaces them)" if summary.kept else ""
    print(
        f"{summary.captioner}: {summary.captioned} captioned, {len(summary.kept)} kept{hint}, "
        f"{len(summary.failed)} failed"
    )
    return 1 if summary.failed else 0


def _run_make_tiny_captioner(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorapipe.dataset.captioners.tiny import make_tiny_captioner

    print(make_tiny_captioner(Path(args.out), args.captioner, seed=args.seed))
    return 0


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

    from lorapipe.dataset.check import check_dataset
    from lorapipe.dataset.render import render_report

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
        sys.stdout.write(render_report(report))
    return 1 if report.has_errors else 0
