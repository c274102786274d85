"""`lorapipe eval` cost per checkpoint vs just rendering the same images (tiny SDXL, tiny CLIP/DINOv2, CPU).
Target: the metric overhead (scoring every image with DINOv2 and CLIP) <= 10% of the rendering time.

The baseline is the peer's real best: the same Generator rendering the same prompts, seeds and checkpoints with
`render_all` (one pipeline, the LoRA switched in place, batched), and nothing else. The evaluation is
`evaluate_run` on the same loaded generator and metric models: rendering + scoring + the recommendation, and then
the report (eval.json, the PNGs, the self-contained eval.html with its matplotlib curves), timed separately. Both are
timed in alternating order after a warm-up; each figure is the median of the repeats.

The run is real: the sample dataset trained for a few steps with a checkpoint every 2 steps (step 2, step 4 and
the final file), plus the no-LoRA column.
Run: python bench/eval.py [--quick] [--size 128] [--steps 12] [--images-per-prompt 2] [--repeats 3]
(`--quick`: 64 px, 4 steps, one image per prompt; a minute on two CPU cores)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _setup(root: Path) -> tuple[Path, Path, Path, tuple[Path, Path]]:
    """(tiny model, dataset, run folder, (clip, dino)) under `root`, built once."""
    from lorapipe.dataset.sample import write_sample_dataset
    from lorapipe.evaluate.tiny import make_tiny_metric_models
    from lorapipe.sdxl.factory import make_pipeline_folder
    from lorapipe.train.run import run_training

    model = root / "tiny-sdxl"
    if not (model / "model_index.json").exists():
        make_pipeline_folder(model, preset="tiny", seed=0)
    dataset = root / "datasets" / "0001-dataset"
    if not dataset.exists():
        write_sample_dataset(root / "datasets")
    run = root / "run"
    if not (run / "dwjz_toy.safetensors").exists():
        run_training(
            dataset,
            output_dir=run,
            base_model=str(model),
            show_progress=False,
            step_lines=False,
            overrides=("max_train_steps=4", "save_every_n_steps=2", "save_every_n_epochs=0", "sample_every_n_steps=0"),
        )
    metric = root / "metric-models"
    models = (metric / "tiny-clip", metric / "tiny-dinov2")
    if not (models[0] / "config.json").exists():
        models = make_tiny_metric_models(metric)
    return model, dataset, run, models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image width and height")
    parser.add_argument("--steps", type=int, default=12, help="sampling steps per image")
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", help="keep the tiny model, run and metric models here between invocations")
    parser.add_argument("--quick", action="store_true", help="64 px, 4 steps, 1 image per prompt (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.images_per_prompt = 64, 4, 1

    import torch

    from lorapipe.evaluate.checkpoints import BASE, find_checkpoints
    from lorapipe.evaluate.metrics import load_metric_models
    from lorapipe.evaluate.prompts import default_prompts, subject_of
    from lorapipe.evaluate.render import RenderSettings, render_all
    from lorapipe.evaluate.report import write_report
    from lorapipe.evaluate.run import EvalOptions, evaluate_run
    from lorapipe.generate.generator import Generator
    from lorapipe.generate.quiet import quiet_model_loading

    torch.set_num_threads(args.threads)
    quiet_model_loading()
    root = Path(args.root or tempfile.mkdtemp(prefix="lorapipe-bench-eval-"))
    model, dataset, run, (clip, dino) = _setup(root)
    generator = Generator.load(str(model), lora_dir=run, device="cpu", dtype="fp32", hash_model=False)
    models = load_metric_models(str(clip), str(dino), device="cpu")
    settings = RenderSettings(
        width=args.size,
        height=args.size,
        steps=args.steps,
        sampler_name="Euler",
        scheduler=None,
        images_per_prompt=args.images_per_prompt,
        batch_size=args.images_per_prompt,
    )
    options = EvalOptions(dataset=dataset, render=settings, show_progress=False, output_dir=root / "eval")
    columns = (BASE, *find_checkpoints(run).checkpoints)
    prompts = default_prompts(subject_of(dataset), options.seed)
    images = len(columns) * len(prompts) * args.images_per_prompt

    def render_only() -> float:
        start = time.perf_counter()
        render_all(generator, columns, prompts, settings)
        return time.perf_counter() - start

    def evaluation() -> tuple[float, float, float, float]:
        start = time.perf_counter()
        result = evaluate_run(run, options, generator=generator, metric_models=models, write=False)
        scored = time.perf_counter() - start
        start = time.perf_counter()
        write_report(result, options.output_dir, options)
        return scored, sum(result.seconds_render.values()), result.seconds_metrics, time.perf_counter() - start

    evaluation()  # warm-up: first fuse of each checkpoint, matplotlib import, allocator
    render_times, eval_times, inner_times, metric_times, report_times = [], [], [], [], []
    for repeat in range(args.repeats):
        if repeat % 2 == 0:  # alternate the order, so drift in the machine's load hits both alike
            render_times.append(render_only())
        scored, inner, metrics, report = evaluation()
        if repeat % 2 == 1:
            render_times.append(render_only())
        eval_times.append(scored)
        inner_times.append(inner)
        metric_times.append(metrics)
        report_times.append(report)
    render, scored = statistics.median(render_times), statistics.median(eval_times)
    inner = statistics.median(inner_times)
    metrics, report = statistics.median(metric_times), statistics.median(report_times)
    per = len(columns)
    print(
        f"{len(columns)} columns (no LoRA + {per - 1} checkpoints) x {len(prompts)} prompts x "
        f"{args.images_per_prompt} images = {images} images at {args.size}px, {args.steps} steps, "
        f"median of {args.repeats}"
    )
    print(f"render only (baseline)     : {render:7.2f} s  ({render / per:6.2f} s per checkpoint)")
    print(
        f"evaluate (render + scores) : {scored:7.2f} s  ({scored / per:6.2f} s per checkpoint)  "
        f"ratio {scored / render:.3f}x"
    )
    print(
        f"  of which its rendering   : {inner:7.2f} s  (the same images; run-to-run noise vs the baseline: "
        f"{100 * (inner - render) / render:+.1f}%)"
    )
    print(
        f"  of which metric scoring  : {metrics:7.2f} s  = {100 * metrics / render:.1f}% of rendering (target <= 10%)"
    )
    print(f"report (json, PNGs, html)  : {report:7.2f} s  = {100 * report / render:.1f}% of rendering")
    print(f"everything vs render only  : {(scored + report) / render:.3f}x")


if __name__ == "__main__":
    main()
