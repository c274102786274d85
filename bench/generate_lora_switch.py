"""Switching between two LoRA sets on the tiny model: lorapipe's fused-set switch vs diffusers' own way.

A server alternating between requests for LoRA A and LoRA B switches its weights every request. lorapipe puts the
saved original weights back and merges the new file's deltas (generate/lora_set.py); the baseline is what a
diffusers user writes: `unfuse_lora` + `unload_lora_weights` for the old set, `load_lora_weights` + `fuse_lora` for
the new one. Both read their file from disk inside the timed switch. Target: ratio <= 1.0.
Run: python bench/generate_lora_switch.py [--switches 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

from generate_common import tiny_generator


def time_switches(switch, names: tuple[str, str], count: int) -> float:
    """Median seconds of one switch, alternating between the two names (the first switch is a warm-up)."""
    switch(names[1])
    samples = []
    for i in range(count):
        start = time.perf_counter()
        switch(names[i % 2])
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionXLPipeline
    from generate_fixtures import write_kohya_lora
    from safetensors.torch import load_file

    from lorapipe.generate.lora_set import ActiveLora

    generator = tiny_generator(args.threads)
    lora_dir = generator.registry.root
    model_dir = lora_dir.parent / "tiny-sdxl"  # tiny_setup's layout
    write_kohya_lora(lora_dir / "other.safetensors", model_dir, seed=2)

    def lorapipe_switch(name: str) -> None:
        generator.loras.apply([ActiveLora(generator.registry.resolve(name), name, 0.8, 0.8)])

    pipe = StableDiffusionXLPipeline.from_pretrained(str(model_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    loaded = []

    def diffusers_switch(name: str) -> None:
        if loaded:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()
        pipe.load_lora_weights(load_file(str(lora_dir / f"{name}.safetensors")), adapter_name=name)
        pipe.fuse_lora(lora_scale=0.8)
        loaded[:] = [name]

    names = ("toy", "other")
    ours = time_switches(lorapipe_switch, names, args.switches)
    theirs = time_switches(diffusers_switch, names, args.switches)
    ratio = ours / theirs
    print(
        f"LoRA set switch, tiny model, CPU, {args.threads} thread(s), median of {args.switches} switches "
        f"(each reads its file): lorapipe {ours * 1000:.1f} ms, diffusers load+fuse/unfuse+unload "
        f"{theirs * 1000:.1f} ms, ratio {ratio:.2f}  (target <= 1.0: {'PASS' if ratio <= 1.0 else 'FAIL'})"
    )


if __name__ == "__main__":
    main()
