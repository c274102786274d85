"""Real SDXL CLIP tokenizers built offline from the BPE merges shipped in the open-clip-torch package.

SDXL's two tokenizers share OpenAI's CLIP BPE (vocab 49408); the second pads with "!" instead of
"<|endoftext|>". We read the merges file without importing open_clip (which would pull torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from lorapipe.errors import ModelLoadError
from lorapipe.sdxl.constants import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE

_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI CLIP keeps the first 49152 - 256 - 2 merges (line 0 of the file is a header).
_N_MERGES = 49152 - 256 - 2  # 512 byte symbols + 48894 merges + 2 specials = 49408


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+n."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    # CLIP orders the vocabulary by the printable bytes first, then the remapped ones.
    order = printable + [b for b in range(256) if b not in printable]
    return [chars[b] for b in order]


def bpe_merges_path() -> Path:
    """Locate the merges file inside the installed open-clip-torch package (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "open-clip-torch is not installed: it carries the CLIP BPE vocabulary; "
            "run `pip install --no-deps open-clip-torch`"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / _MERGES_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"{_MERGES_FILE} not found inside the open_clip package; reinstall open-clip-torch")


def write_clip_tokenizer_files(out_dir: Path, pad_token: str) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs of one SDXL tokenizer folder."""
    lines = gzip.open(bpe_merges_path(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 1 + _N_MERGES]
    symbols = _bytes_to_unicode()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab_list) != CLIP_VOCAB_SIZE:
        raise ModelLoadError(f"built a CLIP vocabulary of {len(vocab_list)} entries, expected {CLIP_VOCAB_SIZE}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_list)}), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CLIP_MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


def write_sdxl_tokenizers(pipeline_dir: Path) -> None:
    """Write `tokenizer/` (pads with <|endoftext|>) and `tokenizer_2/` (pads with "!") as in SDXL 1.0."""
    write_clip_tokenizer_files(pipeline_dir / "tokenizer", pad_token="<|endoftext|>")
    write_clip_tokenizer_files(pipeline_dir / "tokenizer_2", pad_token="!")
