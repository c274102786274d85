"""`lorapipe generate`'s Generator vs diffusers' StableDiffusionXLPipeline called directly (tiny model, CPU).

Same model, prompt, steps and seed: the pixels must be identical, and the time ratio should be <= 1.05.
Run: python bench/generate_vs_diffusers.py [--steps 8] [--size 128] [--repeats 7]
"""

from __future__ import annotations

import argparse

import numpy as np
from generate_common import interleaved, tiny_setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps shared machines fair)")
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionXLPipeline

    from lorapipe.generate.generator import GenerationRequest, Generator
    from lorapipe.generate.quiet import quiet_model_loading

    torch.set_num_threads(args.threads)
    quiet_model_loading()
    model_dir, lora_dir = tiny_setup()
    generator = Generator.load(str(model_dir), lora_dir=lora_dir, device="cpu", dtype="fp32")
    reference = StableDiffusionXLPipeline.from_pretrained(model_dir)
    reference.set_progress_bar_config(disable=True)
    prompt, negative, seed = "a photo of dwjz toy on a table", "blurry", 1234
    request = GenerationRequest(prompt, negative_prompt=negative, steps=args.steps, width=args.size,
                                height=args.size, seed=seed, sampler_name="Euler", cfg_scale=7.0)

    def ours():
        return generator.generate(request).images[0]

    def theirs():
        return reference(prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=7.0,
                         width=args.size, height=args.size,
                         generator=torch.Generator("cpu").manual_seed(seed)).images[0]

    identical = np.array_equal(np.asarray(ours()), np.asarray(theirs()))
    times = interleaved({"lorapipe": ours, "diffusers": theirs}, args.repeats)
    ratio = times["lorapipe"] / times["diffusers"]
    print(f"identical pixels: {identical}")
    print(f"lorapipe Generator: {times['lorapipe'] * 1000:.1f} ms/image   diffusers: "
          f"{times['diffusers'] * 1000:.1f} ms/image   ({args.steps} steps, {args.size}px, median of {args.repeats})")
    print(f"time ratio lorapipe/diffusers: {ratio:.3f}  (target <= 1.05: {'PASS' if ratio <= 1.05 else 'FAIL'})")


if __name__ == "__main__":
    main()
