"""`lorapipe eval RUN_OR_FOLDER`: score every checkpoint of a run and recommend one; `lorapipe eval-make-tiny-models`.

Only argparse lives here; torch, diffusers and transformers load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from lorapipe.evaluate.metrics import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL
    from lorapipe.evaluate.recommend import CLIP_T_MARGIN, LEAKAGE_MARGIN
    from lorapipe.evaluate.render import RenderSettings

    defaults = RenderSettings()
    parser = subparsers.add_parser(
        "eval",
        help="score every checkpoint of a training run (DINO-I, CLIP-I, CLIP-T, leakage) and recommend one",
        description="Render fixed prompts with fixed seeds for each checkpoint of a run and for no LoRA (one loaded "
        "pipeline, the LoRA switched in place), measure subject fidelity (DINO-I, CLIP-I vs the "
        "training images), prompt fidelity (CLIP-T) and leakage (no-trigger images vs no LoRA), and "
        "write eval.json and a self-contained eval.html. Prints the recommended checkpoint.",
    )
    parser.add_argument("run", metavar="RUN_OR_FOLDER", help="the run's output folder, or one of its LoRA files")
    parser.add_argument(
        "--dataset",
        metavar="DIR",
        help="the training dataset (default: the dataset recorded in the run's train_summary.json)",
    )
    parser.add_argument(
        "--prompts",
        metavar="FILE",
        help="one prompt per line; {subject} = the trigger and class; "
        "lines starting with 'leak:' are no-trigger prompts (default: a built-in set)",
    )
    parser.add_argument(
        "--trigger",
        metavar="WORDS",
        help="the subject as trained, e.g. 'dwjz toy' (default: the dataset's <repeats>_<trigger> [class] folder name)",
    )
    parser.add_argument(
        "--base-model",
        metavar="PATH",
        help="SDXL folder, single file or hub id (default: the one recorded in train_summary.json)",
    )
    parser.add_argument(
        "--clip-model",
        default=DEFAULT_CLIP_MODEL,
        metavar="PATH_OR_ID",
        help=f"CLIP for CLIP-I/CLIP-T (default {DEFAULT_CLIP_MODEL})",
    )
    parser.add_argument(
        "--dino-model",
        default=DEFAULT_DINO_MODEL,
        metavar="PATH_OR_ID",
        help=f"DINOv2 for DINO-I and leakage (default {DEFAULT_DINO_MODEL})",
    )
    parser.add_argument("-o", "--output-dir", metavar="DIR", help="where eval.json/eval.html go (default RUN/eval)")
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--cfg-scale", type=float, default=defaults.cfg_scale)
    parser.add_argument("--sampler", default=defaults.sampler_name, help="A1111 sampler name")
    parser.add_argument("--scheduler", default=defaults.scheduler, help="A1111 schedule type")
    parser.add_argument("--images-per-prompt", type=int, default=defaults.images_per_prompt)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per denoising batch")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first prompt (others follow from it)")
    parser.add_argument(
        "--clip-t-margin",
        type=float,
        default=CLIP_T_MARGIN,
        help="recommendation: how far below the best CLIP-T a checkpoint may be",
    )
    parser.add_argument(
        "--leakage-margin",
        type=float,
        default=LEAKAGE_MARGIN,
        help="recommendation: how far above the lowest leakage a checkpoint may be",
    )
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when present)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_eval)

    tiny = subparsers.add_parser(
        "eval-make-tiny-models", help="write tiny random-weight CLIP and DINOv2 folders (tests, offline demos)"
    )
    tiny.add_argument("out", metavar="OUT", help="folder to create (gets tiny-clip/ and tiny-dinov2/)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_run_make_tiny)


def _run_eval(args: argparse.Namespace) -> int:
    from lorapipe.evaluate.render import RenderSettings
    from lorapipe.evaluate.run import EvalOptions, evaluate_run
    from lorapipe.generate.quiet import quiet_model_loading
    from lorapipe.sdxl.libraries import import_sdxl_libraries

    import_sdxl_libraries()
    quiet_model_loading()  # the image bar is the progress; loader bars of three models would bury it

    render = RenderSettings(
        width=args.width,
        height=args.height,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        sampler_name=args.sampler,
        scheduler=args.scheduler,
        images_per_prompt=args.images_per_prompt,
        batch_size=args.batch_size,
    )
    options = EvalOptions(
        dataset=Path(args.dataset) if args.dataset else None,
        prompts_file=Path(args.prompts) if args.prompts else None,
        trigger=args.trigger,
        base_model=args.base_model,
        clip_model=args.clip_model,
        dino_model=args.dino_model,
        output_dir=Path(args.output_dir) if args.output_dir else None,
        render=render,
        seed=args.seed,
        device=args.device,
        clip_t_margin=args.clip_t_margin,
        leakage_margin=args.leakage_margin,
        show_progress=not args.no_progress,
    )
    result = evaluate_run(Path(args.run), options)
    for refused in result.refused:
        print(
            f"warning: {refused.checkpoint.path}: skipped, the generator refused it ({refused.reason})",
            file=sys.stderr,
        )
    print(f"{'checkpoint':<32} {'step':>6} {'DINO-I':>7} {'CLIP-I':>7} {'CLIP-T':>7} {'leak':>7} {'val loss':>8}")
    for checkpoint, score in zip(result.checkpoints, result.scores):
        loss = result.validation_loss.get(checkpoint.label)
        mark = "  <- recommended" if checkpoint.label == result.recommendation.checkpoint else ""
        print(
            f"{checkpoint.label:<32} {checkpoint.step if checkpoint.step is not None else '-':>6} "
            f"{score.dino_i:7.4f} {score.clip_i:7.4f} {score.clip_t:7.4f} {score.leakage:7.4f} "
            f"{'-' if loss is None else f'{loss:.4f}':>8}{mark}"
        )
    print(f"rule: {result.recommendation.rule}")
    print(f"report: {result.html_path}")
    print(result.recommended.path)
    return 0


def _run_make_tiny(args: argparse.Namespace) -> int:
    from lorapipe.evaluate.tiny import make_tiny_metric_models

    clip, dino = make_tiny_metric_models(Path(args.out), seed=args.seed)
    print(f"--clip-model {clip} --dino-model {dino}")
    return 0
