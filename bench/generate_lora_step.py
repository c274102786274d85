"""Time per denoising step with one fused LoRA vs no LoRA (tiny model, CPU). Target: <= 1.02x.

A fused set is merged into the base weights and the peft wrappers are removed, so the step should cost the same.
Per-step time is the slope between two step counts, which cancels text encoding and VAE decode.
Run: python bench/generate_lora_step.py [--size 128] [--repeats 7]
"""

from __future__ import annotations

import argparse

from generate_common import interleaved, tiny_setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from lorapipe.generate.generator import GenerationRequest, Generator
    from lorapipe.generate.quiet import quiet_model_loading

    torch.set_num_threads(args.threads)
    quiet_model_loading()
    model_dir, lora_dir = tiny_setup()
    plain = Generator.load(str(model_dir), lora_dir=lora_dir, device="cpu", dtype="fp32")
    fused = Generator.load(str(model_dir), lora_dir=lora_dir, device="cpu", dtype="fp32")

    def run(generator, prompt, steps):
        return lambda: generator.generate(GenerationRequest(prompt, steps=steps, width=args.size, height=args.size,
                                                            seed=1, cfg_scale=7.0))

    lo, hi = 4, 16
    fused.generate(GenerationRequest("toy <lora:toy:0.8>", steps=1, width=64, height=64))  # fuse once
    loads = fused.loras.loads
    times = interleaved({
        "plain_lo": run(plain, "toy", lo), "plain_hi": run(plain, "toy", hi),
        "lora_lo": run(fused, "toy <lora:toy:0.8>", lo), "lora_hi": run(fused, "toy <lora:toy:0.8>", hi),
    }, args.repeats)
    assert fused.loras.loads == loads, "the LoRA set was rebuilt between identical requests"
    plain_step = (times["plain_hi"] - times["plain_lo"]) / (hi - lo)
    lora_step = (times["lora_hi"] - times["lora_lo"]) / (hi - lo)
    ratio = lora_step / plain_step
    print(f"per step: no LoRA {plain_step * 1000:.2f} ms, one fused LoRA {lora_step * 1000:.2f} ms "
          f"({args.size}px, CFG, median of {args.repeats})")
    print(f"ratio fused/none: {ratio:.3f}  (target <= 1.02: {'PASS' if ratio <= 1.02 else 'FAIL'})")


if __name__ == "__main__":
    main()
