"""Auto-captioners: one module per model family behind one small protocol.

Each family module (`blip`, `florence2`, `wd14`) has `DEFAULT_MODEL` (the checkpoint kohya_ss users know) and
`load(model, device) -> Captioner`; `model` is a local folder or a hub id. The models are only ever used to
write caption files (`lorapipe.dataset.caption`); nothing else in lorapipe reads them. Heavy imports (torch,
transformers, onnxruntime) happen inside `load`, never when this package is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lorapipe.errors import ModelLoadError

if TYPE_CHECKING:
    from PIL import Image

CAPTIONERS = ("blip", "florence2", "wd14")
DEFAULT_CAPTIONER = "blip"
DEFAULT_INPUT_SIDE = 1024  # decode this much of a photo when a captioner cannot say what it looks at


class Captioner(Protocol):
    """Turns a batch of RGB images into one caption (plain text or comma-separated tags) per image.

    Work is split so that a batch is cheap for the model's thread: `prepare` does one image's pixel work (resizing
    to the model's input, layout) and runs in the decoding threads, several images at once; `caption` takes a batch
    of prepared inputs and makes one model call. `caption([prepare(image) for image in images])` captions images.
    """

    name: str  # family and model, e.g. "blip Salesforce/blip-image-captioning-large"
    input_side: int  # the shorter side, in pixels, of what the model looks at: decoding needs no more than this

    def prepare(self, image: Image.Image) -> Any: ...

    def caption(self, inputs: Sequence[Any]) -> list[str]: ...


def captioner_module(kind: str):
    if kind not in CAPTIONERS:
        raise ModelLoadError(f"--captioner {kind!r}: unknown captioner; use one of {', '.join(CAPTIONERS)}")
    return importlib.import_module(f"{__name__}.{kind}")


def default_model(kind: str) -> str:
    return captioner_module(kind).DEFAULT_MODEL


def load_captioner(
    kind: str = DEFAULT_CAPTIONER, model: str | Path | None = None, *, device: str | None = None
) -> Captioner:
    """Load a captioner of family `kind` from `model` (local folder or hub id; default: the family's usual one)."""
    module = captioner_module(kind)
    return module.load(str(model or module.DEFAULT_MODEL), device or best_device())


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hub_or_local(model: str, kind: str) -> str:
    """`model` as given when it is a folder or could be a hub id; a clear error for a missing local path."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{model}: a {kind} captioner is a folder (config, weights, processor files); "
                "pass the folder, or a hub id"
            )
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(
            f"{model}: no such {kind} captioner folder, and not a hub id (owner/name); fix --captioner-model"
        )
    return model


class ProcessorResize:
    """The per-image half of a transformers image processor that resizes every image to one fixed size (BLIP,
    Florence-2): `prepare` resizes exactly as the processor would, so its own resize becomes a no-op and the pixels
    it sees are identical, while the costly part (a 12 MP photo down to 384-768 px) runs in the decoding threads."""

    def __init__(self, image_processor: Any):
        size = getattr(image_processor, "size", None) if getattr(image_processor, "do_resize", False) else None
        height, width = (size.get("height"), size.get("width")) if size is not None else (None, None)
        self.size = (int(width), int(height)) if height and width else None  # None: the processor sizes per image
        self.resample = getattr(image_processor, "resample", None)

    @property
    def input_side(self) -> int:
        return min(self.size) if self.size else DEFAULT_INPUT_SIDE

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.size is None or self.resample is None or image.size == self.size:
            return image
        return image.resize(self.size, self.resample)


@dataclass
class TransformersCaptioner:
    """What the transformers captioners (BLIP, Florence-2) share: the model, its processor, the device, and the
    processor's resize run ahead in the decoding threads. Each family adds its own `caption`."""

    name: str
    model: Any
    processor: Any
    device: str
    resize: ProcessorResize

    @property
    def input_side(self) -> int:
        return self.resize.input_side

    def prepare(self, image: Any) -> Any:
        return self.resize(image)
