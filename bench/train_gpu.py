"""GPU benchmark of `lorapipe train` on the full SDXL architecture (random weights, real shapes) at 1024x1024.

Profiles (batch 1, network_dim 32, bf16, cached latents and text-encoder outputs, U-Net LoRA only, SDPA):
  fast        channels_last U-Net, AdamW (optionally torch.compile with --compile)
  low-memory  + gradient checkpointing + AdamW8bit (bitsandbytes)
Prints steady it/s (after 3 warm-up steps) and peak allocated VRAM per profile. Without CUDA it prints
"skipped" and exits 0. Run: `python bench/train_gpu.py [--steps 30] [--compile]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

COMMON = ("mixed_precision=bf16", "network_dim=32", "network_alpha=16", "cache_latents=true",
          "cache_text_encoder_outputs=true", "network_train_unet_only=true", "resolution=1024,1024",
          "enable_bucket=false", "bucket_no_upscale=false", "min_bucket_reso=256", "max_bucket_reso=1024",
          "bucket_reso_steps=64", "train_batch_size=1", "save_every_n_epochs=0", "save_precision=bf16",
          "noise_offset=0.0357", "seed=1")
PROFILES = {
    "fast": ("optimizer_type=AdamW", "gradient_checkpointing=false"),
    "low-memory": ("optimizer_type=AdamW8bit", "gradient_checkpointing=true"),
}


def _dataset_1024(root: Path) -> Path:
    """The sample dataset with every image resized to 1024x1024 (sizes are what costs, not content)."""
    from PIL import Image

    from lorapipe.dataset.sample import write_sample_dataset

    dataset = write_sample_dataset(root)
    for image in dataset.rglob("*.png"):
        Image.open(image).convert("RGB").resize((1024, 1024), Image.Resampling.BICUBIC).save(image)
    return dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net in the fast profile")
    parser.add_argument("--keep", metavar="DIR", help="build the model/dataset here and keep them")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA device (this benchmark needs a GPU)")
        return 0
    from lorapipe.sdxl.factory import make_pipeline_folder
    from lorapipe.train.models import SpeedOptions
    from lorapipe.train.run import run_training

    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lorapipe-gpu-bench-"))
    try:
        model = scratch / "sdxl-full-random"
        if not (model / "model_index.json").is_file():
            print("building the full SDXL architecture with random weights (bf16) ...", flush=True)
            make_pipeline_folder(model, preset="full", dtype="bf16", seed=0)
        dataset = scratch / "data" / "0001-dataset"
        if not dataset.is_dir():
            dataset = _dataset_1024(scratch / "data")
        print(f"device: {torch.cuda.get_device_name(0)}, steps per profile: {args.steps}")
        for name, extra in PROFILES.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            speed = SpeedOptions(channels_last=True, compile_unet=args.compile and name == "fast")
            try:
                result = run_training(dataset, base_model=str(model), output_dir=scratch / f"out-{name}",
                                      overrides=COMMON + extra + (f"max_train_steps={args.steps}",),
                                      show_progress=False, step_lines=False, speed=speed)
            except Exception as exc:  # noqa: BLE001 - a profile that cannot run (e.g. no bitsandbytes) is reported
                print(f"{name:11s} failed: {str(exc).splitlines()[0]}")
                continue
            import json

            summary = json.loads(result.summary_path.read_text())
            vram = summary["memory"].get("peak_gpu_allocated_bytes", 0) / 2**30
            rate = summary["steps_per_second_steady"] or summary["steps_per_second"]
            print(f"{name:11s} {rate:.2f} it/s   peak VRAM {vram:.1f} GiB   (compile={speed.compile_unet})")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
