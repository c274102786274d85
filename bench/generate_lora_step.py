"""Time per denoising step with one fused LoRA vs no LoRA (tiny model, CPU). Target: <= 1.02x.

A fused set is merged into the base weights and the peft wrappers are removed, so the step should cost the same.
Per-step time is the slope between two step counts, which cancels text encoding and VAE decode. Both conditions
run on ONE generator, switching the set between rounds (the switch itself is untimed): two separately loaded
pipelines differ by up to ~4% on their own (allocation placement), which would swamp a 2% target.
Run: python bench/generate_lora_step.py [--size 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics

from generate_common import interleaved, tiny_setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True) first")
    args = parser.parse_args()

    import torch

    from lorapipe.generate.generator import GenerationRequest, Generator
    from lorapipe.generate.quiet import quiet_model_loading

    torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    quiet_model_loading()
    model_dir, lora_dir = tiny_setup()
    generator = Generator.load(str(model_dir), lora_dir=lora_dir, device="cpu", dtype="fp32")

    def run(prompt, steps):
        return lambda: generator.generate(GenerationRequest(prompt, steps=steps, width=args.size, height=args.size,
                                                            seed=1, cfg_scale=7.0))

    def switch_to(prompt):  # untimed: fuse or unfuse before a round
        generator.generate(GenerationRequest(prompt, steps=1, width=64, height=64))

    lo, hi = 4, 16
    samples: dict[str, list[float]] = {"plain_lo": [], "plain_hi": [], "lora_lo": [], "lora_hi": []}
    for _ in range(args.repeats):
        for label, prompt in (("plain", "toy"), ("lora", "toy <lora:toy:0.8>")):
            switch_to(prompt)
            loads = generator.loras.loads
            round_times = interleaved({f"{label}_lo": run(prompt, lo), f"{label}_hi": run(prompt, hi)}, 1)
            assert generator.loras.loads == loads, "the LoRA set was rebuilt between identical requests"
            for key, value in round_times.items():
                samples[key].append(value)
    times = {key: statistics.median(values) for key, values in samples.items()}
    plain_step = (times["plain_hi"] - times["plain_lo"]) / (hi - lo)
    lora_step = (times["lora_hi"] - times["lora_lo"]) / (hi - lo)
    ratio = lora_step / plain_step
    print(f"per step: no LoRA {plain_step * 1000:.2f} ms, one fused LoRA {lora_step * 1000:.2f} ms "
          f"({args.size}px, CFG, median of {args.repeats})")
    print(f"ratio fused/none: {ratio:.3f}  (target <= 1.02: {'PASS' if ratio <= 1.02 else 'FAIL'})")


if __name__ == "__main__":
    main()
