"""Benchmark: `dataset caption` images/s with each tiny captioner, batched vs one image per model call.

Run: python bench/caption.py [N] [--size WxH] [--quick] [--real-size]. Writes N phone-size JPEGs (default 24 at
3000x4000, 12 MP, half of them upright only through EXIF, as phones save portraits) and captions them through
`caption_dataset` (threaded decoding and resizing, the model, atomic writes) with batch_size 1 and then 8. The
baseline is that same path with batch_size 1 (kohya's tag_images_by_wd14_tagger.py with --batch_size 1 and data
loader workers): one model call per image, the same threads decoding ahead of the model. Only the model calls
change, so the ratio is what batching them is worth; the decoding threads keep up either way.

The tiny models cost almost nothing. BLIP and Florence-2 still pay per call (generate()'s token loop), which a
batch shares; the tiny WD14 graph is one matrix product, so its figure is bound by JPEG decoding and stays near
1x. `--real-size` times the WD14 tagger at its real size instead: a random-weight ViT-B/16 at 448 px with 10,861
tags (wd-vit-tagger-v3's shape), exported to ONNX here; on a CPU its compute dominates, and batching it gains
nothing there (on a GPU, where one image leaves the device mostly idle, it should: not measured here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from lorapipe.dataset.caption import caption_dataset
from lorapipe.dataset.captioners import CAPTIONERS
from lorapipe.dataset.captioners.tiny import make_tiny_captioner
from lorapipe.dataset.captioners.wd14 import GENERAL, MODEL_FILE, TAGS_FILE

BATCH = 8
ROUNDS = 2
EXIF_ORIENTATION = 0x0112
REAL_TAGS = 10_861  # SmilingWolf/wd-vit-tagger-v3's selected_tags.csv
REAL_SIDE = 448


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like image: smooth shapes plus sensor noise (pure noise would compress and decode unlike a photo)."""
    rng = np.random.default_rng(seed)
    width, height = size
    smooth = Image.fromarray(rng.integers(0, 255, (48, 36, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    noise = rng.integers(-12, 12, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(smooth, np.int16) + noise, 0, 255).astype(np.uint8))


def write_photo(path: Path, seed: int, size: tuple[int, int]) -> None:
    exif = Image.Exif()
    if seed % 2:  # a portrait stored sideways, upright through EXIF orientation 6 (rotate 90 degrees clockwise)
        exif[EXIF_ORIENTATION] = 6
        size = (size[1], size[0])
    photo(seed, size).save(path, quality=90, exif=exif)


def make_dataset(root: Path, count: int, size: tuple[int, int]) -> Path:
    dataset = root / "0001-dataset"
    subset = dataset / "10_sks dog"
    subset.mkdir(parents=True)
    (dataset / "kohya-sdxl-config.toml").write_text('caption_extension = ".txt"\nresolution = "1024,1024"\n')
    with ThreadPoolExecutor() as pool:  # JPEG encoding releases the GIL
        list(pool.map(lambda n: write_photo(subset / f"{n:04d}.jpg", n, size), range(count)))
    return dataset


def make_real_size_tagger(out: Path) -> Path:
    """A random-weight ViT-B/16 tagger at 448 px with REAL_TAGS sigmoid outputs, in the real taggers' interface
    (NHWC BGR 0-255 in, dynamic batch axis), exported with torch's TorchScript-based exporter (the dynamo one
    needs onnxscript)."""
    import warnings

    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=REAL_SIDE, patch_size=16, num_labels=REAL_TAGS)  # ViT-B: 768 wide, 12 layers
    vit = ViTForImageClassification(config).eval()
    with torch.no_grad():  # a few dozen tags per image pass the threshold, as with a trained tagger
        vit.classifier.bias.normal_(-3.5, 1.0)

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, bgr):
            rgb = bgr.flip(-1).permute(0, 3, 1, 2) / 127.5 - 1.0
            return torch.sigmoid(self.vit(pixel_values=rgb).logits)

    out.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            Tagger(),
            (torch.zeros(1, REAL_SIDE, REAL_SIDE, 3),),
            str(out / MODEL_FILE),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
        )
    rows = [f"{n},rating_{n},9,0" for n in range(4)] + [f"{n},tag_{n},{GENERAL},0" for n in range(4, REAL_TAGS)]
    (out / TAGS_FILE).write_text("tag_id,name,category,count\n" + "\n".join(rows) + "\n")
    return out


def timed(dataset: Path, kind: str, model: Path, batch_size: int) -> float:
    start = time.perf_counter()
    summary = caption_dataset(
        dataset, captioner=kind, model=str(model), overwrite=True, batch_size=batch_size, device="cpu"
    )
    seconds = time.perf_counter() - start
    assert summary.captioned == len(summary.written) and not summary.failed, summary.failed
    return summary.captioned / seconds


def compare(dataset: Path, label: str, kind: str, model: Path) -> None:
    timed(dataset, kind, model, BATCH)  # warm-up: imports, first-call allocations, the page cache
    single = batched = 0.0
    for _ in range(ROUNDS):  # alternated, best of each: a busy moment on a shared machine hits one run, not a side
        single = max(single, timed(dataset, kind, model, 1))
        batched = max(batched, timed(dataset, kind, model, BATCH))
    print(
        f"{label:16} one at a time {single:7.2f} images/s   batch {BATCH} {batched:7.2f} images/s   "
        f"batched/single {batched / single:.1f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, help="photos to caption (default 24; --real-size: 16)")
    parser.add_argument("--size", default="3000x4000", help="photo width x height (default 3000x4000, 12 MP)")
    parser.add_argument("--quick", action="store_true", help="12 photos at 1500x2000")
    parser.add_argument("--real-size", action="store_true", help="the WD14 tagger at its real size instead")
    args = parser.parse_args()
    size = (1500, 2000) if args.quick else tuple(int(side) for side in args.size.lower().split("x"))
    count = args.count or (12 if args.quick else 16 if args.real_size else 24)

    import torch

    torch.set_num_threads(1)  # the BLIP/Florence-2 tiny models: as on a shared machine, one thread each
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        dataset = make_dataset(root, count, size)
        print(f"{count} JPEGs at {size[0]}x{size[1]}", flush=True)
        if args.real_size:
            compare(dataset, f"wd14 ViT-B {REAL_SIDE}px", "wd14", make_real_size_tagger(root / "wd14-real"))
            return
        for kind in CAPTIONERS:
            compare(dataset, f"{kind} tiny", kind, make_tiny_captioner(root / kind, kind))


if __name__ == "__main__":
    main()
