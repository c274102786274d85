"""Florence-2 captions through transformers' native `Florence2ForConditionalGeneration` (transformers >= 5).

The task prompt `<DETAILED_CAPTION>` gives two or three sentences: richer than BLIP, still short enough for
max_token_length 225. Checkpoints in the native format are the `florence-community/*` ones; Microsoft's original
repositories need `trust_remote_code` and are not loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lorapipe.dataset.captioners import ProcessorResize, TransformersCaptioner, hub_or_local
from lorapipe.errors import ModelLoadError

DEFAULT_MODEL = "florence-community/Florence-2-large"
TASK = "<DETAILED_CAPTION>"
MAX_NEW_TOKENS = 128


class Florence2Captioner(TransformersCaptioner):
    def caption(self, images: Sequence[Any]) -> list[str]:
        import torch

        inputs = self.processor(text=[TASK] * len(images), images=list(images), return_tensors="pt")
        inputs = inputs.to(self.device, self.model.dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


def load(model: str, device: str) -> Florence2Captioner:
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    source = hub_or_local(model, "florence2")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(source)
        network = Florence2ForConditionalGeneration.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{model}: cannot load a Florence-2 captioner ({exc}); pass a local folder or an "
            f"online hub id in transformers' format such as {DEFAULT_MODEL}"
        ) from None
    resize = ProcessorResize(processor.image_processor)
    return Florence2Captioner(f"florence2 {model}", network.to(device).eval(), processor, device, resize)
