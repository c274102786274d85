"""GPU: full SDXL architecture (random weights), 1024x1024, 30 steps with CFG and one fused LoRA; s/image per rung.

Skips without CUDA. Rungs (each adds to the previous): fp32 -> fp16 (SDPA is diffusers' default) -> one fused LoRA
(should cost nothing per step) -> channels_last UNet -> torch.compile UNet (--compile; minutes of warm-up).
Weights are random, so the images are noise; speed does not depend on the values.
Run: python bench/generate_gpu_sdxl.py [--steps 30] [--size 1024] [--repeats 3] [--compile]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from generate_common import median_time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile rung")
    parser.add_argument("--skip-fp32", action="store_true")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("SKIP: no CUDA device; this benchmark needs a GPU (full SDXL at 1024 px)")
        return 0
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from generate_fixtures import write_kohya_lora_for
    from transformers import CLIPTokenizer

    from lorapipe.generate.generator import GenerationRequest, Generator
    from lorapipe.generate.model_info import ModelInfo
    from lorapipe.registry import LoraRegistry
    from lorapipe.sdxl.factory import build_models
    from lorapipe.sdxl.presets import SCHEDULER_CONFIG
    from lorapipe.sdxl.tokenizers import write_sdxl_tokenizers

    work = Path(tempfile.mkdtemp(prefix="lorapipe-gpu-bench-"))
    write_sdxl_tokenizers(work)
    models = build_models("full", seed=0)
    write_kohya_lora_for(models, work / "loras" / "subject.safetensors", seed=1, rank=16, scale=0.01)
    pipe = StableDiffusionXLPipeline(
        **models, tokenizer=CLIPTokenizer.from_pretrained(work / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(work / "tokenizer_2"),
        scheduler=EulerDiscreteScheduler.from_config({k: v for k, v in SCHEDULER_CONFIG.items()
                                                      if not k.startswith("_")}))
    pipe.set_progress_bar_config(disable=True)
    results: list[tuple[str, float]] = []

    def rung(name: str, generator: Generator, prompt: str) -> None:
        request = GenerationRequest(prompt, negative_prompt="blurry", steps=args.steps, width=args.size,
                                    height=args.size, seed=1, cfg_scale=7.0, sampler_name="DPM++ 2M")

        def once():
            generator.generate(request)
            torch.cuda.synchronize()

        once()  # warm-up (and the one-time LoRA fuse)
        seconds = median_time(once, args.repeats)
        results.append((name, seconds))
        print(f"{name:<34} {seconds:7.2f} s/image   peak {torch.cuda.max_memory_allocated() / 2**30:5.1f} GiB",
              flush=True)

    info = ModelInfo(name="sdxl-random", location=str(work), sha256=None)
    registry = LoraRegistry(work / "loras")
    if not args.skip_fp32:
        pipe.to("cuda", torch.float32)
        rung("fp32", Generator(pipe, model=info, registry=registry), "a photo of a subject")
    pipe.to("cuda", torch.float16)
    generator = Generator(pipe, model=info, registry=registry)
    rung("fp16 + SDPA", generator, "a photo of a subject")
    rung("fp16 + SDPA + fused LoRA", generator, "a photo of a subject <lora:subject:0.8>")
    pipe.unet.to(memory_format=torch.channels_last)
    rung("+ channels_last", generator, "a photo of a subject <lora:subject:0.8>")
    if args.compile:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)
        started = time.perf_counter()
        rung("+ torch.compile (max-autotune)", generator, "a photo of a subject <lora:subject:0.8>")
        print(f"  (compile warm-up included in the first call: {time.perf_counter() - started:.0f} s total)")
    print("\nwhat each rung bought (vs the previous):")
    for (_, prev), (name, now) in zip(results, results[1:]):
        print(f"  {name:<34} {prev / now:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
