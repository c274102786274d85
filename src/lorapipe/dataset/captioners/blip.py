"""BLIP captions through transformers (`BlipForConditionalGeneration`), as kohya_ss' "BLIP captioning" writes them.

Greedy decoding with a minimum length, so captions are reproducible and never a bare "a".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lorapipe.dataset.captioners import ProcessorResize, TransformersCaptioner, hub_or_local
from lorapipe.errors import ModelLoadError

DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"
MAX_NEW_TOKENS = 50  # kohya's make_captions.py: max_length 75 with min_length 5 (its lengths count the prompt too)
MIN_NEW_TOKENS = 5


class BlipCaptioner(TransformersCaptioner):
    def caption(self, images: Sequence[Any]) -> list[str]:
        import torch

        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device, self.model.dtype)
        with torch.inference_mode():
            ids = self.model.generate(
                **inputs, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MIN_NEW_TOKENS, num_beams=1, do_sample=False
            )
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


def load(model: str, device: str) -> BlipCaptioner:
    import torch
    from transformers import AutoProcessor, BlipForConditionalGeneration

    source = hub_or_local(model, "blip")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(source)
        network = BlipForConditionalGeneration.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        raise ModelLoadError(
            f"{model}: cannot load a BLIP captioner ({exc}); pass a local folder or an online "
            f"hub id such as {DEFAULT_MODEL}"
        ) from None
    resize = ProcessorResize(processor.image_processor)
    return BlipCaptioner(f"blip {model}", network.to(device).eval(), processor, device, resize)
