"""DreamBooth's subject-driven measures, per image and per checkpoint.

- DINO-I: mean cosine similarity of DINOv2 embeddings (the CLS token after the final norm), generated vs training
  images: subject fidelity that is sensitive to the subject's identity, not just its category.
- CLIP-I: the same with CLIP image embeddings.
- CLIP-T: CLIP similarity of an image to its prompt with the trigger word removed: prompt fidelity.
- leakage: 1 - DINO similarity between a no-trigger image and the no-LoRA image of the same prompt and seed.

Models are loaded with transformers from a folder or hub id (`CLIPModel`, `Dinov2Model`); `tiny.py` writes
random-weight ones of the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from lorapipe.errors import EvaluationError

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_DINO_MODEL = "facebook/dinov2-base"
EMBED_BATCH = 16


@dataclass
class MetricModels:
    """CLIP (image + text towers) and DINOv2 with their preprocessors, on one device, in eval mode."""

    clip: object
    clip_images: object
    clip_tokenizer: object
    dino: object
    dino_images: object
    device: str
    clip_name: str = ""
    dino_name: str = ""

    def clip_image(self, images: Sequence) -> object:
        return self._embed(
            images, self.clip_images, self.clip.dtype, lambda px: _pooled(self.clip.get_image_features(pixel_values=px))
        )

    def dino_image(self, images: Sequence) -> object:
        return self._embed(
            images, self.dino_images, self.dino.dtype, lambda px: self.dino(pixel_values=px).pooler_output
        )

    def clip_text(self, texts: Sequence[str]) -> object:
        import torch

        tokens = self.clip_tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.clip.config.text_config.max_position_embeddings,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            features = _pooled(
                self.clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            )
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    def _embed(self, images: Sequence, processor, dtype, forward) -> object:
        import torch

        out = []
        with torch.inference_mode():
            for first in range(0, len(images), EMBED_BATCH):
                batch = [image.convert("RGB") for image in images[first : first + EMBED_BATCH]]
                pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
                pixels = pixels.to(self.device, dtype)  # the model's dtype: fp16 on CUDA
                out.append(torch.nn.functional.normalize(forward(pixels).float(), dim=-1).cpu())
        return torch.cat(out)


def _pooled(output):
    """transformers 5 returns an output object whose pooler_output is the projected embedding; 4.x a tensor."""
    return getattr(output, "pooler_output", output)


def load_metric_models(
    clip_model: str = DEFAULT_CLIP_MODEL, dino_model: str = DEFAULT_DINO_MODEL, *, device: str | None = None
) -> MetricModels:
    """Load CLIP and DINOv2 from folders or hub ids; a missing one raises EvaluationError saying how to get it."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, Dinov2Model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    clip = _load(lambda: CLIPModel.from_pretrained(clip_model, dtype=dtype), clip_model, "--clip-model")
    clip_images = _load(lambda: AutoImageProcessor.from_pretrained(clip_model), clip_model, "--clip-model")
    clip_tokenizer = _load(lambda: AutoTokenizer.from_pretrained(clip_model), clip_model, "--clip-model")
    dino = _load(lambda: Dinov2Model.from_pretrained(dino_model, dtype=dtype), dino_model, "--dino-model")
    dino_images = _load(lambda: AutoImageProcessor.from_pretrained(dino_model), dino_model, "--dino-model")
    return MetricModels(
        clip=clip.to(device).eval(),
        clip_images=clip_images,
        clip_tokenizer=clip_tokenizer,
        dino=dino.to(device).eval(),
        dino_images=dino_images,
        device=device,
        clip_name=str(clip_model),
        dino_name=str(dino_model),
    )


def _load(loader, name: str, option: str):
    try:
        return loader()
    except (OSError, ValueError) as exc:  # transformers' "not found / not a valid model" for a folder or hub id
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hub_id = DEFAULT_CLIP_MODEL if option == "--clip-model" else DEFAULT_DINO_MODEL
        if Path(name).expanduser().exists():
            raise EvaluationError(
                f"{option} {name}: not a transformers model folder ({first[:200]}); pass a folder "
                "holding config.json and the weights, or a hub id"
            ) from exc
        if name.startswith(("/", ".", "~")):
            raise EvaluationError(
                f"{option} {name}: no such folder; download the model there once with "
                f"`hf download {hub_id} --local-dir {name}`, or pass a hub id"
            ) from exc
        raise EvaluationError(
            f"{option} {name}: cannot load it ({first[:200]}); download it once with `hf download {name}` "
            f"(or pass a local folder holding config.json and the weights), or skip evaluation"
        ) from exc


@dataclass(frozen=True)
class ImageScore:
    """The measures of one rendered image (leakage only for no-trigger prompts of a LoRA checkpoint)."""

    checkpoint: str
    prompt: int
    seed: int
    dino_i: float
    clip_i: float
    clip_t: float
    leakage: float | None


@dataclass(frozen=True)
class CheckpointScore:
    """Means over a checkpoint's images: subject fidelity and prompt fidelity over subject prompts, leakage over
    no-trigger prompts."""

    checkpoint: str
    dino_i: float
    clip_i: float
    clip_t: float
    leakage: float


def score_images(
    models: MetricModels, rendered: dict, prompts: Sequence, training_images: Sequence, base_label: str
) -> list[ImageScore]:
    """Score every rendered image; `rendered` maps (checkpoint, prompt index) to `render.Rendered`."""
    if not training_images:
        raise EvaluationError("dataset: no training images to compare against; pass the run's dataset (--dataset)")
    train_dino = models.dino_image(training_images)
    train_clip = models.clip_image(training_images)
    texts = models.clip_text([p.clip_text for p in prompts])
    by_index = {p.index: p for p in prompts}
    text_row = {p.index: row for row, p in enumerate(prompts)}
    keys = list(rendered)
    images = [image for key in keys for image in rendered[key].images]
    dino, clip = models.dino_image(images), models.clip_image(images)
    rows, position, dino_of = [], 0, {}
    for key in keys:
        for seed in rendered[key].seeds:
            dino_of[(key, seed)] = dino[position]
            position += 1
    position = 0
    for key in keys:
        label, index = key
        prompt = by_index[index]
        for seed in rendered[key].seeds:
            leakage = None
            if not prompt.with_trigger and label != base_label:
                base = dino_of[((base_label, index), seed)]
                leakage = 1.0 - float(dino[position] @ base)
            rows.append(
                ImageScore(
                    checkpoint=label,
                    prompt=index,
                    seed=seed,
                    dino_i=float((train_dino @ dino[position]).mean()),
                    clip_i=float((train_clip @ clip[position]).mean()),
                    clip_t=float(texts[text_row[index]] @ clip[position]),
                    leakage=leakage,
                )
            )
            position += 1
    return rows


def checkpoint_scores(rows: Sequence[ImageScore], prompts: Sequence, labels: Sequence[str]) -> list[CheckpointScore]:
    """Per-checkpoint means, in the order of `labels`."""
    subject = {p.index for p in prompts if p.with_trigger}
    out = []
    for label in labels:
        mine = [r for r in rows if r.checkpoint == label]
        on_subject = [r for r in mine if r.prompt in subject]
        leaks = [r.leakage for r in mine if r.leakage is not None]
        out.append(
            CheckpointScore(
                checkpoint=label,
                dino_i=fmean(r.dino_i for r in on_subject),
                clip_i=fmean(r.clip_i for r in on_subject),
                clip_t=fmean(r.clip_t for r in on_subject),
                leakage=fmean(leaks) if leaks else 0.0,
            )
        )
    return out
