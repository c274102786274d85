"""Tiny random-weight captioners built from config, for tests, benchmarks and trying the studio offline.

`make_tiny_captioner(out, kind)` writes a folder that the family's real `load()` reads exactly like a downloaded
checkpoint: a transformers model + processor folder for BLIP and Florence-2, and for WD14 an ONNX graph with the
tagger's input/output layout plus a `selected_tags.csv`. The weights are random (seeded), so captions are random
words; what they prove is the loading, batching and writing path.
"""

from __future__ import annotations

from pathlib import Path

from lorapipe.dataset.captioners import CAPTIONERS
from lorapipe.errors import ModelLoadError

# A small English vocabulary so random captions still read as words.
WORDS = (
    "a",
    "photo",
    "of",
    "the",
    "dog",
    "cat",
    "man",
    "woman",
    "toy",
    "robot",
    "sitting",
    "standing",
    "on",
    "in",
    "with",
    "and",
    "red",
    "blue",
    "green",
    "white",
    "black",
    "small",
    "big",
    "grass",
    "beach",
    "room",
    "table",
    "window",
    "light",
    "smiling",
    "close",
    "up",
    "portrait",
    "wearing",
    "hat",
    "shirt",
    "tree",
    "street",
    "city",
    "snow",
    "water",
    "sky",
    "wall",
    "wooden",
    "floor",
)
IMAGE_SIZE = 32


def make_tiny_captioner(out: Path, kind: str = "blip", *, seed: int = 0) -> Path:
    """Write a tiny `kind` captioner folder at `out` (created; must not exist or be empty) and return it."""
    if kind not in CAPTIONERS:
        raise ModelLoadError(f"--captioner {kind!r}: unknown captioner; use one of {', '.join(CAPTIONERS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ModelLoadError(f"{out}: folder is not empty; choose a new folder for the tiny captioner")
    out.mkdir(parents=True, exist_ok=True)
    {"blip": _make_blip}[kind](out, seed)
    return out


def _make_blip(out: Path, seed: int) -> None:
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: index for index, token in enumerate(specials + list(WORDS))}
    tokenizer = BertTokenizer(vocab=vocab)
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "sep_token_id": 3,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
    }
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer=tokenizer
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
