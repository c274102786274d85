"""The pipeline's evaluate step: score every checkpoint of the trained run, pick the one to publish, and record the
measures in the published LoRA's metadata and in `publish.json`.

On by default when the metric models are on this machine ("auto": a local folder, or a hub id already in the
Hugging Face cache; otherwise the step is skipped with the reason and the final file is published as before, so a
run never starts a multi-gigabyte download by itself); "on" loads them whatever it takes (downloading a hub id) and
fails the run when that is impossible; "off" skips the step. The evaluation
itself is `lorapipe.evaluate` (the same as `lorapipe eval`); the report lands in RUN/eval/.

Metadata keys written into the published file (strings, sd-scripts style; our own `ss_lorapipe_eval_` prefix so
they travel with the file into A1111/ComfyUI metadata viewers and Civitai uploads):

- `ss_lorapipe_eval_checkpoint`: the evaluated file's stem (e.g. `dwjz_toy-step00000500`)
- `ss_lorapipe_eval_recommended`: "True" when this is the checkpoint the rule picked, "False" when the user asked
  for the final one instead
- `ss_lorapipe_eval_dino_i`, `ss_lorapipe_eval_clip_i`, `ss_lorapipe_eval_clip_t`, `ss_lorapipe_eval_leakage`:
  this checkpoint's measures (4 decimals)
- `ss_lorapipe_eval_no_lora_dino_i`, `ss_lorapipe_eval_no_lora_clip_t`: the base model's, for scale
- `ss_lorapipe_eval_models`: JSON {"clip": ..., "dino": ...}
- `ss_lorapipe_eval_rule`: the recommendation rule in words
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lorapipe.errors import PipelineError
from lorapipe.evaluate.metrics import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL
from lorapipe.pipeline.artifact import Artifact
from lorapipe.pipeline.runlog import RunLog

EVAL_MODES = ("auto", "on", "off")
PUBLISH_CHOICES = ("recommended", "final")
METADATA_PREFIX = "ss_lorapipe_eval_"
DEFAULT_RESOLUTION = 1024


@dataclass(frozen=True)
class EvaluateOptions:
    """The evaluate step's part of a run request."""

    mode: str = "auto"
    publish: str = "recommended"  # or "final": publish the last file whatever the scores say
    clip_model: str = DEFAULT_CLIP_MODEL
    dino_model: str = DEFAULT_DINO_MODEL
    steps: int = 25
    images_per_prompt: int = 2

    def __post_init__(self) -> None:
        if self.mode not in EVAL_MODES:
            raise PipelineError(f"--evaluate {self.mode!r}: use one of {', '.join(EVAL_MODES)}")
        if self.publish not in PUBLISH_CHOICES:
            raise PipelineError(f"--publish-checkpoint {self.publish!r}: use one of {', '.join(PUBLISH_CHOICES)}")
        if self.steps < 1 or self.images_per_prompt < 1:
            raise PipelineError("--eval-steps / --eval-images-per-prompt: must be at least 1")


@dataclass(frozen=True)
class Evaluated:
    """What the step decided: the artifact to publish (its LoRA carrying the measures) and the manifest section
    (None when the step was skipped; `detail` says why)."""

    artifact: Artifact
    manifest: dict | None
    detail: str


def evaluate_artifact(
    artifact: Artifact,
    options: EvaluateOptions,
    *,
    dataset_dir: Path,
    base_model: str | None,
    out_dir: Path,
    log: RunLog,
) -> Evaluated:
    """Evaluate the run in `artifact.folder` and pick the LoRA to publish."""
    from lorapipe.evaluate.metrics import load_metric_models
    from lorapipe.evaluate.render import RenderSettings
    from lorapipe.evaluate.run import EvalOptions, evaluate_run

    missing = [name for name in (options.clip_model, options.dino_model) if not model_on_disk(name)]
    if options.mode == "off" or (missing and options.mode == "auto"):
        reason = (
            "off (--evaluate off)"
            if options.mode == "off"
            else f"metric model(s) not on this machine: {', '.join(missing)} (download with `hf download NAME`, "
            "or run with --evaluate on)"
        )
        log.info(f"evaluate: skipped, {reason}")
        return Evaluated(artifact=_without_stale_measures(artifact), manifest=None, detail=reason)
    models = load_metric_models(options.clip_model, options.dino_model)
    width, height = _training_resolution(artifact.lora)
    render = RenderSettings(
        width=width,
        height=height,
        steps=options.steps,
        images_per_prompt=options.images_per_prompt,
        batch_size=min(options.images_per_prompt, RenderSettings().batch_size),
    )
    result = evaluate_run(
        artifact.folder,
        EvalOptions(dataset=dataset_dir, base_model=base_model, output_dir=out_dir, render=render, show_progress=False),
        metric_models=models,
    )
    chosen = result.recommended if options.publish == "recommended" else result.run.final
    refused = {r.checkpoint.label: r.reason for r in result.refused}
    for label, reason in refused.items():
        log.info(f"evaluate: skipped {label}: the generator refused it ({reason})")
    if chosen.label in refused:
        raise PipelineError(
            f"{chosen.path}: the final checkpoint was refused by the generator ({refused[chosen.label]}); publish the "
            "recommended one (--publish-checkpoint recommended) or train again"
        )
    scores = {s.checkpoint: s for s in result.scores}
    base = result.scores[0]
    metadata = {
        "checkpoint": chosen.label,
        "recommended": str(chosen.label == result.recommendation.checkpoint),
        "dino_i": f"{scores[chosen.label].dino_i:.4f}",
        "clip_i": f"{scores[chosen.label].clip_i:.4f}",
        "clip_t": f"{scores[chosen.label].clip_t:.4f}",
        "leakage": f"{scores[chosen.label].leakage:.4f}",
        "no_lora_dino_i": f"{base.dino_i:.4f}",
        "no_lora_clip_t": f"{base.clip_t:.4f}",
        "models": json.dumps({"clip": options.clip_model, "dino": options.dino_model}),
        "rule": result.recommendation.rule,
    }
    write_eval_metadata(chosen.path, metadata)
    # The file changed: hash it again so sidecars, uploads and the publish check see the new bytes.
    published = artifact.rewritten(chosen.path).publishing(chosen.path)
    log.info(
        f"evaluate: recommended {result.recommendation.checkpoint}; publishing {chosen.label} "
        f"(report {result.html_path})"
    )
    manifest = {
        "published": chosen.label,
        "recommended": result.recommendation.checkpoint,
        "publish_choice": options.publish,
        "rule": result.recommendation.rule,
        "report": {"json": str(result.json_path), "html": str(result.html_path)},
        "refused": [{"checkpoint": r.checkpoint.label, "reason": r.reason} for r in result.refused],
        "checkpoints": [
            {
                "checkpoint": s.checkpoint,
                "step": c.step,
                "dino_i": s.dino_i,
                "clip_i": s.clip_i,
                "clip_t": s.clip_t,
                "leakage": s.leakage,
                "validation_loss": result.validation_loss.get(s.checkpoint),
            }
            for s, c in zip(result.scores, result.checkpoints)
        ],
    }
    return Evaluated(
        artifact=published,
        manifest=manifest,
        detail=f"recommended {result.recommendation.checkpoint}, publishing {chosen.label}",
    )


def _without_stale_measures(artifact: Artifact) -> Artifact:
    """A reused (cached) training output may carry measures an earlier run's evaluation wrote; they do not describe
    this run's choice, so they come out of the file to publish when this run does not evaluate."""
    from lorapipe.safetensors_header import read_header

    if not any(key.startswith(METADATA_PREFIX) for key in read_header(artifact.lora).metadata):
        return artifact
    write_eval_metadata(artifact.lora, {})
    return artifact.rewritten(artifact.lora)


def model_on_disk(name: str) -> bool:
    """A transformers model folder, or a hub id whose config is already in the Hugging Face cache (no network)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file()
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def write_eval_metadata(path: Path, values: dict[str, str]) -> None:
    """Add the `ss_lorapipe_eval_*` keys to a LoRA file with the lora writer (atomic; `sshs_*` hashes recomputed)."""
    from safetensors.torch import load_file

    from lorapipe.lora.file import save_kohya_lora
    from lorapipe.safetensors_header import read_header

    metadata = {k: v for k, v in read_header(path).metadata.items() if not k.startswith(METADATA_PREFIX)}
    metadata.update({METADATA_PREFIX + key: value for key, value in values.items()})
    save_kohya_lora(path, load_file(str(path)), metadata)


def _training_resolution(lora: Path) -> tuple[int, int]:
    """Render at the size the LoRA was trained at (`modelspec.resolution`, "WxH"); SDXL's 1024 when unknown."""
    from lorapipe.safetensors_header import read_header

    text = read_header(lora).metadata.get("modelspec.resolution", "")
    width, _, height = text.partition("x")
    if width.isdigit() and height.isdigit() and int(width) % 8 == 0 and int(height) % 8 == 0:
        return int(width), int(height)
    return DEFAULT_RESOLUTION, DEFAULT_RESOLUTION
