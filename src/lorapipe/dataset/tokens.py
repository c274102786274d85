"""Caption token counts with SDXL's real CLIP tokenizer (built offline), to report captions that get truncated.

Imported only by `dataset check` when token counting is on: it loads transformers' tokenizer code lazily.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path


class CaptionTokenCounter:
    """Counts content tokens (without BOS/EOS) the way SDXL's first tokenizer splits a caption."""

    def __init__(self) -> None:
        from transformers import CLIPTokenizer

        from lorapipe.sdxl.tokenizers import write_clip_tokenizer_files

        with tempfile.TemporaryDirectory(prefix="lorapipe-tok-") as folder:
            write_clip_tokenizer_files(Path(folder), pad_token="<|endoftext|>")
            self._tokenizer = CLIPTokenizer.from_pretrained(folder)

    def count(self, captions: Iterable[str]) -> list[int]:
        texts = list(captions)
        if not texts:
            return []
        encoded = self._tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
        return [len(ids) for ids in encoded]
