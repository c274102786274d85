"""Tiny random-weight captioners built from config, for tests, benchmarks and trying the studio offline.

`make_tiny_captioner(out, kind)` writes a folder that the family's real `load()` reads exactly like a downloaded
checkpoint: a transformers model + processor folder for BLIP and Florence-2, and for WD14 an ONNX graph with the
tagger's input/output layout plus a `selected_tags.csv`. The weights are random (seeded), so captions are random
words; what they prove is the loading, batching and writing path.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lorapipe.atomic import atomic_write_bytes, atomic_write_text
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
    {"blip": _make_blip, "florence2": _make_florence2, "wd14": _make_wd14}[kind](out, seed)
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


def _byte_level_bpe():
    """A tiny byte-level BPE (BART's kind of tokenizer) trained on WORDS, as (vocab, merges)."""
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # Only the bytes of WORDS: random weights then emit letters and words, never half a UTF-8 character.
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    tokenizer.train_from_iterator([" ".join(WORDS)] * 8 + [f" {word}" for word in WORDS], trainer)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.model.save(folder)
        lines = (Path(folder) / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return tokenizer.get_vocab(), merges


def _make_florence2(out: Path, seed: int) -> None:
    import torch
    from transformers import BartTokenizer, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab, merges = _byte_level_bpe()
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
    side = 2 * IMAGE_SIZE  # DaViT's four stages shrink 32x: a 2x2 grid, plus the pooled token = 5 image tokens
    processor = Florence2Processor(
        image_processor=CLIPImageProcessorPil(
            size={"height": side, "width": side}, do_center_crop=False, image_seq_length=5
        ),
        tokenizer=tokenizer,
    )
    text = {
        "vocab_size": len(tokenizer),
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 256,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "decoder_start_token_id": tokenizer.eos_token_id,
    }
    vision = {
        "depths": [1, 1, 1, 1],
        "embed_dim": [8, 16, 16, 32],
        "num_heads": [1, 1, 1, 1],
        "num_groups": [1, 1, 1, 1],
        "window_size": 2,
        "projection_dim": 32,
        "drop_path_rate": 0.0,
    }
    torch.manual_seed(seed)
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    model = Florence2ForConditionalGeneration(config)
    # Random weights repeat one token or stop at once; these make the tiny model's captions a few distinct tokens.
    model.generation_config.min_new_tokens = 5
    model.generation_config.no_repeat_ngram_size = 1
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _make_wd14(out: Path, seed: int) -> None:
    """A tagger graph with the real ones' interface: NHWC BGR 0-255 in, one sigmoid probability per tag out."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lorapipe.dataset.captioners.wd14 import CHARACTER, GENERAL, MODEL_FILE, TAGS_FILE

    rating = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9)]
    tags = (
        rating
        + [(word, GENERAL) for word in WORDS]
        + [("^_^", GENERAL), ("long_hair", GENERAL), ("dwjz_(robot)", CHARACTER), ("sks_(dog)", CHARACTER)]
    )
    rng = np.random.default_rng(seed)
    pixels = IMAGE_SIZE * IMAGE_SIZE * 3
    # Inputs are 0..255: scale the weights so the logits spread over a few units and some tags pass 0.35.
    weights = (rng.standard_normal((pixels, len(tags))) / (128.0 * np.sqrt(pixels))).astype(np.float32)
    bias = rng.normal(-1.5, 1.0, len(tags)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input_1:0"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
            helper.make_node("Add", ["logits", "bias"], ["shifted"]),
            helper.make_node("Sigmoid", ["shifted"], ["predictions_sigmoid"]),
        ],
        "tiny_wd14_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", IMAGE_SIZE, IMAGE_SIZE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(tags)])],
        initializer=[numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by onnxruntime releases back to 1.14
    onnx.checker.check_model(model)
    atomic_write_bytes(out / MODEL_FILE, model.SerializeToString())
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["tag_id", "name", "category", "count"])
    writer.writerows([index, name, category, 1000 - index] for index, (name, category) in enumerate(tags))
    atomic_write_text(out / TAGS_FILE, table.getvalue())
