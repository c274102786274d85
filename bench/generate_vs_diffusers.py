"""`lorapipe generate` vs diffusers' StableDiffusionXLPipeline called directly (tiny model, CPU).

1. In one process: lorapipe's Generator vs the pipeline, same model, prompt, steps, scheduler (Euler) and seed;
   the pixels must be identical, and the time ratio should be <= 1.02.
2. One small image from the command line (`lorapipe generate ... -o out.png`) vs a plain script that loads the
   pipeline and saves its image: wall time from launch to exit (start-up included) and peak RSS of each process,
   pixels identical. Both compile their sources once into a shared bytecode cache first (as an installed package
   has its .pyc files).

Run: python bench/generate_vs_diffusers.py [--steps 8] [--size 128] [--repeats 7] [--cli-repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from generate_common import child_env, interleaved, measure_process, tiny_setup

PROMPT, NEGATIVE, SEED = "a photo of dwjz toy on a table", "blurry", 1234

# The plain-diffusers side of part 2: what a diffusers user writes to get one image.
_PLAIN_PIPELINE = """
import sys
import torch
from diffusers import StableDiffusionXLPipeline

model, prompt, negative, steps, size, seed, out = sys.argv[1:]
pipe = StableDiffusionXLPipeline.from_pretrained(model)
image = pipe(prompt, negative_prompt=negative, num_inference_steps=int(steps), guidance_scale=7.0, width=int(size),
             height=int(size), generator=torch.Generator("cpu").manual_seed(int(seed))).images[0]
image.save(out)
"""


def compare_in_process(*, steps: int = 8, size: int = 128, repeats: int = 7, threads: int = 1) -> float:
    """Print s/image and pixel identity of the Generator vs the pipeline; returns the time ratio."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from lorapipe.generate.generator import GenerationRequest, Generator
    from lorapipe.generate.quiet import quiet_model_loading

    torch.set_num_threads(threads)
    quiet_model_loading()
    model_dir, lora_dir = tiny_setup()
    generator = Generator.load(str(model_dir), lora_dir=lora_dir, device="cpu", dtype="fp32")
    reference = StableDiffusionXLPipeline.from_pretrained(model_dir)
    reference.set_progress_bar_config(disable=True)
    request = GenerationRequest(
        PROMPT,
        negative_prompt=NEGATIVE,
        steps=steps,
        width=size,
        height=size,
        seed=SEED,
        sampler_name="Euler",
        cfg_scale=7.0,
    )

    def ours():
        return generator.generate(request).images[0]

    def theirs():
        return reference(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=steps,
            guidance_scale=7.0,
            width=size,
            height=size,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]

    identical = np.array_equal(np.asarray(ours()), np.asarray(theirs()))
    times = interleaved({"lorapipe": ours, "diffusers": theirs}, repeats)
    ratio = times["lorapipe"] / times["diffusers"]
    print(f"generate in process ({steps} steps, {size}px, Euler, median of {repeats}): identical pixels: {identical}")
    print(
        f"  lorapipe Generator {times['lorapipe']:.4f} s/image   diffusers pipeline {times['diffusers']:.4f} "
        f"s/image   ratio {ratio:.3f} (goal <= 1.02: {'PASS' if ratio <= 1.02 and identical else 'FAIL'})"
    )
    return ratio


def compare_cli(root: Path, *, steps: int = 8, size: int = 128, repeats: int = 3) -> float:
    """Print wall time and peak RSS of `lorapipe generate` vs the plain pipeline script, one image each; returns
    the median wall-time ratio."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    model_dir, _ = tiny_setup(root)
    empty_loras = root / "no-loras"
    empty_loras.mkdir(exist_ok=True)
    env = child_env(root / "pycache")
    script = root / "plain_pipeline.py"
    script.write_text(_PLAIN_PIPELINE)

    def command(name: str, out: Path) -> list[str]:
        if name == "lorapipe":
            return [
                sys.executable,
                "-m",
                "lorapipe",
                "generate",
                PROMPT,
                "--base-model",
                str(model_dir),
                "--lora-dir",
                str(empty_loras),
                "-o",
                str(out),
                "--negative",
                NEGATIVE,
                "--steps",
                str(steps),
                "--seed",
                str(SEED),
                "--width",
                str(size),
                "--height",
                str(size),
                "--sampler",
                "Euler",
                "--cfg-scale",
                "7",
                "--device",
                "cpu",
                "--dtype",
                "fp32",
            ]
        return [
            sys.executable,
            str(script),
            str(model_dir),
            PROMPT,
            NEGATIVE,
            str(steps),
            str(size),
            str(SEED),
            str(out),
        ]

    names = ("lorapipe", "diffusers")
    for name in names:  # fill the bytecode cache
        measure_process(command(name, root / f"{name}-warmup.png"), env, root / f"{name}-warmup.log")
    walls: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, list[float]] = {n: [] for n in names}
    for repeat in range(repeats):
        for name in names:
            wall, peak = measure_process(
                command(name, root / f"{name}-{repeat}.png"), env, root / f"{name}-{repeat}.log"
            )
            walls[name].append(wall)
            rss[name].append(peak / 2**20)
    pixels = {n: np.asarray(Image.open(root / f"{n}-0.png").convert("RGB")) for n in names}
    identical = np.array_equal(pixels["lorapipe"], pixels["diffusers"])
    ratio = statistics.median(walls["lorapipe"]) / statistics.median(walls["diffusers"])
    rss_ratio = statistics.median(rss["lorapipe"]) / statistics.median(rss["diffusers"])
    print(
        f"generate one {size}px image from the command line ({steps} steps, launch to exit, median of {repeats}): "
        f"identical pixels: {identical}"
    )
    for name in names:
        print(
            f"  {name:9s} wall min {min(walls[name]):.2f} median {statistics.median(walls[name]):.2f} max "
            f"{max(walls[name]):.2f} s   peak RSS median {statistics.median(rss[name]):.0f} MiB"
        )
    print(
        f"  wall ratio {ratio:.3f} (goal <= 1.0: {'PASS' if ratio <= 1.0 else 'FAIL'})   peak RSS ratio "
        f"{rss_ratio:.3f} (goal <= 1.0: {'PASS' if rss_ratio <= 1.0 else 'FAIL'})"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cli-repeats", type=int, default=3, help="0 skips the command-line comparison")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps shared machines fair)")
    args = parser.parse_args()
    compare_in_process(steps=args.steps, size=args.size, repeats=args.repeats, threads=args.threads)
    if args.cli_repeats:
        with tempfile.TemporaryDirectory(prefix="lorapipe-bench-") as scratch:
            compare_cli(Path(scratch), steps=args.steps, size=args.size, repeats=args.cli_repeats)


if __name__ == "__main__":
    main()
