"""Time per denoising step with one fused LoRA, or one fused LyCORIS LoHa, vs no LoRA (tiny model, CPU).
Target: <= 1.02x for each.

A fused set is merged into the base weights and the peft wrappers are removed, so a step should cost the same.
What is timed is the UNet call of each step (CFG batch), replayed from inputs recorded during a real 16-step
generation of each condition: the model call is the only part of a step that fusing can change. Both conditions
run on ONE UNet whose weights are swapped in place (untimed copy_) between the generator's own fused weights and the
base weights before every call, so allocation placement and machine load hit both alike. Each step's figure is its
fastest repeat (other processes on a shared machine only ever add time), summed over the steps; the earlier
median-of-slopes method swung between 0.84x and 1.14x run to run on the same code.

Every round is run with CPU denormal flushing off and on (scoped, restored after), to show whether subnormal
arithmetic plays a part: with fused weights and LoRA conditioning no weight and no UNet op output is subnormal,
and the two figures agree within noise, so the Generator does not touch the flush-denormal mode.
Run: python bench/generate_lora_step.py [--size 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

from generate_common import tiny_generator
from generate_fixtures import write_loha_for

STEPS = 16


@contextmanager
def flush_denormal(enabled: bool):
    import torch

    previous = torch.set_flush_denormal(enabled)  # returns whether the mode is supported, not the old value
    try:
        yield previous
    finally:
        torch.set_flush_denormal(False)


def record_unet_calls(generator, prompt: str, size: int) -> list:
    """Run one real generation and keep every UNet call's arguments (the fused set is left as `prompt` wants)."""
    from lorapipe.generate.generator import GenerationRequest

    unet = generator.pipe.unet
    original = unet.forward
    calls = []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    unet.forward = recording
    try:
        generator.generate(GenerationRequest(prompt, steps=STEPS, width=size, height=size, seed=1, cfg_scale=7.0))
    finally:
        unet.forward = original
    return calls


def count_subnormal_weights(generator) -> int:
    import torch

    tiny = torch.finfo(torch.float32).tiny
    return sum(int(((p != 0) & (p.abs() < tiny)).sum()) for p in generator.pipe.unet.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    generator = tiny_generator(args.threads)
    unet = generator.pipe.unet
    loha = generator.registry.root / "toy_loha.safetensors"
    if not loha.exists():  # LoHa is merged like any delta, so it must cost nothing per step either
        models = {c: getattr(generator.pipe, c) for c in ("unet", "text_encoder", "text_encoder_2")}
        write_loha_for(models, loha, seed=3)
    prompts = {"plain": "toy", "lora": "toy <lora:toy:0.8>", "loha": "toy <lora:toy_loha:0.8>"}
    recorded, weights, subnormal = {}, {}, 0
    for label, prompt in prompts.items():
        recorded[label] = record_unet_calls(generator, prompt, args.size)
        weights[label] = {name: p.detach().clone() for name, p in unet.named_parameters()}
        if label != "plain":  # while the generator's fused set is in place
            subnormal = max(subnormal, count_subnormal_weights(generator))
    params = dict(unet.named_parameters())

    best: dict[tuple[str, bool, int], float] = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for flush in (False, True):
                with flush_denormal(flush):
                    for step in range(len(recorded["plain"])):
                        for label in prompts:
                            for name, saved in weights[label].items():
                                params[name].copy_(saved)
                            call_args, call_kwargs = recorded[label][step]
                            start = time.perf_counter()
                            unet(*call_args, **call_kwargs)
                            elapsed = time.perf_counter() - start
                            key = (label, flush, step)
                            best[key] = min(best.get(key, float("inf")), elapsed)
    steps = len(recorded["plain"])
    print(
        f"UNet step ({args.size}px, CFG batch, per step the fastest of {args.repeats} repeats, {steps} steps); "
        f"subnormal values in the fused UNet weights: {subnormal}"
    )
    for flush in (False, True):
        plain = sum(best[("plain", flush, i)] for i in range(steps)) / steps
        for label, title in (("lora", "one fused LoRA"), ("loha", "one fused LoHa")):
            fused = sum(best[(label, flush, i)] for i in range(steps)) / steps
            ratio = fused / plain
            print(
                f"  flush denormal {'on ' if flush else 'off'}: no LoRA {plain * 1000:.2f} ms, {title} "
                f"{fused * 1000:.2f} ms, ratio {ratio:.3f}  (target <= 1.02: {'PASS' if ratio <= 1.02 else 'FAIL'})"
            )


if __name__ == "__main__":
    main()
