"""The WD14 tagger (SmilingWolf's ONNX models, kohya's "WD14 captioning") through onnxruntime.

A tagger folder holds `model.onnx` and `selected_tags.csv` (tag_id, name, category, count; category 9 = rating,
4 = character, 0 = general). Images are padded to a white square, resized to the model's input side, fed as
0-255 BGR floats (NHWC), as the model author's own demo does; the outputs are already probabilities. A batch is
one model call (the taggers have a dynamic batch axis; a graph exported with a fixed one gets calls of that size).
Character tags above their threshold come first, then general tags by confidence; rating tags are left out.
Underscores become spaces except in kaomoji such as `^_^`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lorapipe.dataset.captioners import hub_or_local
from lorapipe.errors import ModelLoadError

DEFAULT_MODEL = "SmilingWolf/wd-v1-4-convnext-tagger-v2"  # sd-scripts' tag_images_by_wd14_tagger.py default
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
GENERAL_THRESHOLD = 0.35  # sd-scripts' --thresh default, used for both kinds
CHARACTER_THRESHOLD = 0.35
GENERAL, CHARACTER = 0, 4
PAD_COLOR = (255, 255, 255)
KAOMOJI = frozenset(
    {
        "0_0",
        "(o)_(o)",
        "+_+",
        "+_-",
        "._.",
        "<o>_<o>",
        "<|>_<|>",
        "=_=",
        ">_<",
        "3_3",
        "6_9",
        ">_o",
        "@_@",
        "^_^",
        "o_o",
        "u_u",
        "x_x",
        "|_|",
        "||_||",
    }
)


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


@dataclass
class WD14Tagger:
    name: str
    session: Any
    tags: tuple[Tag, ...]
    general_threshold: float = GENERAL_THRESHOLD
    character_threshold: float = CHARACTER_THRESHOLD

    def __post_init__(self) -> None:
        self._categories = np.array([tag.category for tag in self.tags])
        self._names = [tag.name if tag.name in KAOMOJI else tag.name.replace("_", " ") for tag in self.tags]

    @property
    def input_side(self) -> int:
        return int(self.session.get_inputs()[0].shape[1])  # NHWC

    @property
    def model_batch(self) -> int | None:
        """The graph's fixed batch size (some exports have 1), or None for a dynamic batch axis."""
        size = self.session.get_inputs()[0].shape[0]
        return size if isinstance(size, int) and size > 0 else None

    def prepare(self, image) -> Any:
        """White-padded square, resized to the model's side, as RGB uint8 (HWC); runs in the decoding threads."""
        side = self.input_side
        longest = max(image.size)
        square = Image.new("RGB", (longest, longest), PAD_COLOR)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        square.paste(rgb, ((longest - image.width) // 2, (longest - image.height) // 2))
        if longest != side:
            square = square.resize((side, side), Image.Resampling.BICUBIC)
        return np.asarray(square)

    def caption(self, inputs: Sequence[Any]) -> list[str]:
        if not inputs:
            return []
        # One conversion for the whole batch: RGB uint8 -> BGR float32 0-255 (NHWC), the layout the taggers take.
        batch = np.stack(inputs)[..., ::-1].astype(np.float32)
        step = self.model_batch or len(batch)
        probabilities = np.concatenate(
            [self._run(batch[start : start + step], step) for start in range(0, len(batch), step)]
        )
        return [", ".join(self._tags_of(row)) for row in probabilities]

    def _run(self, chunk, step: int):
        """One model call; a graph with a fixed batch size gets its last chunk padded to that size."""
        count = len(chunk)
        if count < step:
            chunk = np.concatenate([chunk, np.zeros((step - count, *chunk.shape[1:]), chunk.dtype)])
        return self.session.run(None, {self.session.get_inputs()[0].name: chunk})[0][:count]

    def _tags_of(self, row) -> list[str]:
        row = np.asarray(row)
        ordered = []
        for category, threshold in ((CHARACTER, self.character_threshold), (GENERAL, self.general_threshold)):
            (picked,) = np.nonzero((self._categories == category) & (row >= threshold))
            # Highest confidence first (ties by name, reversed too: the order of sorted (probability, name) pairs).
            ordered += sorted(picked.tolist(), key=lambda index: (row[index], self.tags[index].name), reverse=True)
        return [self._names[index] for index in ordered]


def read_tags(path: Path) -> tuple[Tag, ...]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return tuple(Tag(row["name"], int(row["category"])) for row in rows)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(
            f"{path}: not a WD14 tag list (tag_id,name,category,count) ({exc}); use the tagger's own {TAGS_FILE}"
        ) from None


def _files(model: str) -> tuple[Path, Path]:
    source = hub_or_local(model, "wd14")
    folder = Path(source)
    if folder.is_dir():
        return folder / MODEL_FILE, folder / TAGS_FILE
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(source, MODEL_FILE)), Path(hf_hub_download(source, TAGS_FILE))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise ModelLoadError(
            f"{model}: cannot download the WD14 tagger ({exc}); pass a local folder with {MODEL_FILE} and {TAGS_FILE}"
        ) from None


def load(model: str, device: str) -> WD14Tagger:
    import onnxruntime

    model_file, tags_file = _files(model)
    for path in (model_file, tags_file):
        if not path.is_file():
            raise ModelLoadError(f"{path}: missing; a WD14 tagger folder holds {MODEL_FILE} and {TAGS_FILE}")
    tags = read_tags(tags_file)
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        options = onnxruntime.SessionOptions()
        # Idle ORT threads spin by default, starving the threads that decode the next batch meanwhile.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(model_file), options, providers=providers)
    except (
        onnxruntime.capi.onnxruntime_pybind11_state.Fail,
        onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf,
    ) as exc:
        raise ModelLoadError(f"{model_file}: not a loadable ONNX model ({exc}); download the tagger again") from None
    outputs = session.get_outputs()[0].shape[-1]
    if isinstance(outputs, int) and outputs != len(tags):
        raise ModelLoadError(
            f"{tags_file}: lists {len(tags)} tags but {model_file} predicts {outputs}; use the "
            "tag list that came with the model"
        )
    return WD14Tagger(f"wd14 {model}", session, tags)
