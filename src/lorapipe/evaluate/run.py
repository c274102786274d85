"""`evaluate_run`: checkpoints + prompts -> images (one pipeline) -> metrics -> recommendation -> eval.json/html.

Metric models load first, so a missing one fails before any rendering. The base model and the dataset default to
what the run's `train_summary.json` recorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from lorapipe.dataset.images import decode_image
from lorapipe.dataset.layout import find_folder_subsets, is_image_name
from lorapipe.errors import EvaluationError
from lorapipe.evaluate.checkpoints import BASE, Checkpoint, RunCheckpoints, find_checkpoints
from lorapipe.evaluate.metrics import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    CheckpointScore,
    ImageScore,
    checkpoint_scores,
    load_metric_models,
    score_images,
)
from lorapipe.evaluate.prompts import (
    EvalPrompt,
    Subject,
    default_prompts,
    read_prompts,
    subject_from_tokens,
    subject_of,
)
from lorapipe.evaluate.recommend import CLIP_T_MARGIN, LEAKAGE_MARGIN, Recommendation, recommend
from lorapipe.evaluate.render import Refused, Rendered, RenderSettings, render_all
from lorapipe.file_names import TRAIN_SUMMARY_NAME

# Written by train/report.py beside the LoRA files (evaluate reads it as a file; it never imports train).
EVAL_FOLDER = "eval"
# Training images compared against: DINO/CLIP resize to 224 px anyway, so decoding more pixels only costs time.
TRAINING_IMAGE_MIN_SIDE = 256


@dataclass(frozen=True)
class EvalOptions:
    dataset: Path | None = None  # default: dataset_dir recorded in train_summary.json
    prompts_file: Path | None = None
    trigger: str | None = None  # default: the dataset's `<repeats>_<trigger> [class]` folder
    base_model: str | None = None  # default: pretrained_model_name_or_path from train_summary.json
    clip_model: str = DEFAULT_CLIP_MODEL
    dino_model: str = DEFAULT_DINO_MODEL
    output_dir: Path | None = None  # default: RUN/eval
    render: RenderSettings = field(default_factory=RenderSettings)
    seed: int = 1000
    device: str | None = None
    clip_t_margin: float = CLIP_T_MARGIN
    leakage_margin: float = LEAKAGE_MARGIN
    show_progress: bool = True


@dataclass(frozen=True)
class EvalResult:
    run: RunCheckpoints
    subject: Subject
    prompts: tuple[EvalPrompt, ...]
    checkpoints: tuple[Checkpoint, ...]  # the base first, then the run's usable files in training order
    images: dict[tuple[str, int], Rendered]
    image_scores: list[ImageScore]
    scores: list[CheckpointScore]  # same order as `checkpoints`
    validation_loss: dict[str, float | None]
    recommendation: Recommendation
    seconds_render: dict[str, float]
    seconds_metrics: float
    metric_models: dict[str, str] = field(default_factory=dict)  # {"clip": name, "dino": name} as loaded
    refused: tuple[Refused, ...] = ()  # files the generator would not apply: named in the report, not scored
    json_path: Path | None = None
    html_path: Path | None = None

    @property
    def recommended(self) -> Checkpoint:
        return next(c for c in self.checkpoints if c.label == self.recommendation.checkpoint)


def evaluate_run(
    run: Path, options: EvalOptions = EvalOptions(), *, generator=None, metric_models=None, write: bool = True
) -> EvalResult:
    """Evaluate every checkpoint of `run`; `generator`/`metric_models` reuse loaded ones (benchmarks, pipeline)."""
    from lorapipe.evaluate.report import write_report

    found = find_checkpoints(Path(run))
    summary = _train_summary(found.folder)
    dataset = _dataset_folder(options.dataset, summary, found.folder)
    subject = subject_from_tokens(options.trigger) if options.trigger else subject_of(dataset, found.final.metadata)
    prompts = (
        read_prompts(options.prompts_file, subject, options.seed)
        if options.prompts_file
        else default_prompts(subject, options.seed)
    )
    training_images = _training_images(dataset)
    models = metric_models or load_metric_models(options.clip_model, options.dino_model, device=options.device)
    if generator is None:
        from lorapipe.generate.generator import Generator

        generator = Generator.load(
            _base_model(options.base_model, summary, found.folder),
            lora_dir=found.folder,
            device=options.device,
            hash_model=False,
        )
    rendered, seconds_render, refused = _render(generator, (BASE, *found.checkpoints), prompts, options)
    checkpoints = (BASE, *(c for c in found.checkpoints if c.label in seconds_render))
    if len(checkpoints) == 1:
        reasons = "; ".join(f"{r.checkpoint.path}: {r.reason}" for r in refused)
        raise EvaluationError(
            f"{found.folder}: the generator refused every checkpoint ({reasons}); check that the files were trained "
            "for this base model (--base-model) and are complete"
        )
    started = time.perf_counter()
    rows = score_images(models, rendered, prompts, training_images, BASE.label)
    scores = checkpoint_scores(rows, prompts, [c.label for c in checkpoints])
    seconds_metrics = time.perf_counter() - started
    recommendation = recommend(scores[1:], clip_t_margin=options.clip_t_margin, leakage_margin=options.leakage_margin)
    result = EvalResult(
        run=found,
        subject=subject,
        prompts=prompts,
        checkpoints=checkpoints,
        images=rendered,
        image_scores=rows,
        scores=scores,
        validation_loss=_validation_losses(summary, checkpoints),
        recommendation=recommendation,
        seconds_render=seconds_render,
        seconds_metrics=seconds_metrics,
        metric_models={"clip": models.clip_name or options.clip_model, "dino": models.dino_name or options.dino_model},
        refused=refused,
    )
    if not write:
        return result
    out = Path(options.output_dir) if options.output_dir else found.folder / EVAL_FOLDER
    json_path, html_path = write_report(result, out, options)
    return replace(result, json_path=json_path, html_path=html_path)


def _render(generator, checkpoints, prompts, options: EvalOptions):
    from tqdm import tqdm

    total = len(checkpoints) * len(prompts) * options.render.images_per_prompt
    with tqdm(total=total, desc="eval images", unit="image", disable=not options.show_progress) as bar:
        return render_all(generator, checkpoints, prompts, options.render, on_images=bar.update)


def _train_summary(folder: Path) -> dict:
    path = folder / TRAIN_SUMMARY_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"{path}: unreadable ({exc}); restore it or move it away") from exc
    return data if isinstance(data, dict) else {}


def _dataset_folder(given: Path | None, summary: dict, folder: Path) -> Path:
    recorded = (summary.get("config") or {}).get("dataset_dir")  # the dataset folder train resolved
    dataset = Path(given) if given else Path(recorded) if recorded else None
    if dataset is None:
        raise EvaluationError(
            f"{folder}: no {TRAIN_SUMMARY_NAME} naming the dataset; pass --dataset DIR (the "
            "folder holding <repeats>_<trigger> [class])"
        )
    if not dataset.is_dir():
        raise EvaluationError(f"{dataset}: dataset folder not found; pass --dataset DIR")
    return dataset


def _base_model(given: str | None, summary: dict, folder: Path) -> str:
    base = given or (summary.get("config") or {}).get("pretrained_model_name_or_path")
    if not base:
        raise EvaluationError(f"{folder}: no {TRAIN_SUMMARY_NAME} naming the base model; pass --base-model")
    return str(base)


def _training_images(dataset: Path) -> list:
    """The images of the dataset's `<repeats>_<trigger>` folders, or of the folder itself (a plain image_dir)."""
    subsets, _problems = find_folder_subsets(dataset, is_reg=False)
    folders = [s.path for s in subsets] or [dataset]
    paths = sorted(p for folder in folders for p in folder.iterdir() if p.is_file() and is_image_name(p.name))
    if not paths:
        raise EvaluationError(
            f"{dataset}: no training images (in <repeats>_<trigger> folders or the folder itself); pass the dataset "
            "the run was trained on (--dataset)"
        )
    return [decode_image(p, min_side=TRAINING_IMAGE_MIN_SIDE) for p in paths]


def _validation_losses(summary: dict, checkpoints) -> dict[str, float | None]:
    """The last validation loss computed at or before each checkpoint's step (None when the run has none)."""
    points = sorted(
        (int(v["step"]), float(v["loss"]))
        for v in summary.get("validation_losses") or []
        if isinstance(v, dict) and "step" in v and "loss" in v
    )
    out = {}
    for checkpoint in checkpoints:
        before = [loss for step, loss in points if checkpoint.step is not None and step <= checkpoint.step]
        out[checkpoint.label] = before[-1] if before and not checkpoint.is_base else None
    return out
