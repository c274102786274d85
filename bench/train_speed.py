"""CPU benchmark of `lorapipe train` on the tiny SDXL model and the sample dataset.

1. steps/s and peak RSS of `lorapipe train` vs a plain diffusers + peft loop doing the same work on the same data
   (same LoRA targets and rank, AdamW, cached latents, text encoders trained, same batches) -- each in its own
   process, single-threaded, same number of steps. Targets: speed >= 1.0x, memory <= 1.0x.
2. Second-epoch speed-up from cache_latents (epoch 2 / epoch 1 time, with and without the cache).

Run: `python bench/train_speed.py [--steps 40]`. Prints ratios measured in this run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from generate_common import lorapipe_train_cmd


def _env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "DIFFUSERS_VERBOSITY": "error",
        "TRANSFORMERS_VERBOSITY": "error",
    }


def _lorapipe(dataset: Path, model: Path, out: Path, *sets: str) -> dict:
    # The baseline renders no preview images, so the sample config's sample prompts are switched off here.
    cmd = lorapipe_train_cmd(dataset, model, out, ('sample_prompts=""', "sample_every_n_steps=0", *sets))
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "train_summary.json").read_text())


def _baseline_main(dataset: str, model: str, steps: int) -> None:
    """The plain loop (runs in a child process): diffusers pipeline + peft LoRA + AdamW, nothing from the trainer."""
    import random

    import numpy as np
    import torch
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline
    from peft import LoraConfig, inject_adapter_in_model

    from lorapipe.config import load_train_config
    from lorapipe.dataset.batches import epoch_batches, load_sample
    from lorapipe.dataset.scan import scan_dataset
    from lorapipe.lora.targets import kohya_target_names

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_train_config(Path(dataset), base_model=model, output_dir=Path(tempfile.mkdtemp())).config
    scan = scan_dataset(cfg.dataset)
    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    unet, vae, te1, te2 = pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2
    for m in (unet, vae, te1, te2):
        m.requires_grad_(False)
    targets = kohya_target_names(unet, te1, te2, conv=False)
    params = []
    for part, model_ in (("unet", unet), ("text_encoder", te1), ("text_encoder_2", te2)):
        names = [t.module_name for t in targets.part(part)]
        inject_adapter_in_model(
            LoraConfig(r=cfg.network_dim, lora_alpha=cfg.network_alpha, target_modules=names), model_
        )
        params += [p for n, p in model_.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    sched = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
    )
    latent_cache: dict = {}

    def encode(captions):
        ids1 = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        ids2 = pipe.tokenizer_2(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        o1 = te1(ids1.input_ids, output_hidden_states=True)
        o2 = te2(ids2.input_ids, output_hidden_states=True)
        return torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1), o2.text_embeds

    batches = epoch_batches(scan, cfg.dataset, 1, cfg.seed)[:steps]
    start = time.perf_counter()
    stamps = []
    for index, items in enumerate(batches):
        samples = [load_sample(item, cfg.dataset, 1, random.Random(index)) for item in items]
        key = tuple(str(s.path) for s in samples)
        if key not in latent_cache:
            x = torch.from_numpy(np.stack([s.pixels for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1
            with torch.no_grad():
                latent_cache[key] = vae.encode(x).latent_dist.sample() * 0.13025
        latents = latent_cache[key]
        context, pooled = encode([s.caption for s in samples])
        noise = torch.randn_like(latents) + cfg.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1)
        t = torch.randint(0, 1000, (latents.shape[0],))
        time_ids = torch.tensor(
            [[*s.original_size, *s.crop_top_left, *s.target_size] for s in samples], dtype=torch.float32
        )
        pred = unet(
            sched.add_noise(latents, noise, t),
            t,
            context,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        ).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steady = (len(stamps) - 4) / (stamps[-1] - stamps[3])  # after 3 warm-up steps, as the trainer reports it
    print(
        json.dumps(
            {"steps_per_second": len(batches) / seconds, "steps_per_second_steady": steady, "peak_rss_bytes": rss}
        )
    )


def _baseline(dataset: Path, model: Path, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--baseline-child", str(dataset), str(model), str(steps)],
        check=True,
        env=_env(),
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        dataset, model, steps = args.baseline_child
        _baseline_main(dataset, model, int(steps))
        return
    from lorapipe.dataset.sample import write_sample_dataset
    from lorapipe.sdxl.factory import make_pipeline_folder

    with tempfile.TemporaryDirectory(prefix="lorapipe-bench-") as scratch:
        root = Path(scratch)
        model = make_pipeline_folder(root / "tiny", preset="tiny", seed=0)
        dataset = write_sample_dataset(root / "data")
        # The machine may be shared: interleave the two, repeat, and keep each one's best run.
        ours_runs, base_runs = [], []
        for repeat in range(args.repeats):
            ours_runs.append(_lorapipe(dataset, model, root / f"ours{repeat}", f"max_train_steps={args.steps}"))
            base_runs.append(_baseline(dataset, model, args.steps))
        ours_rate = max(r["steps_per_second_steady"] for r in ours_runs)
        base_rate = max(r["steps_per_second_steady"] for r in base_runs)
        ours_rss = min(r["memory"]["peak_rss_bytes"] for r in ours_runs)
        base_rss = min(r["peak_rss_bytes"] for r in base_runs)
        print(f"[1] lorapipe train: {ours_rate:.2f} steps/s, peak RSS {ours_rss / 2**20:.0f} MiB")
        print(f"    plain diffusers+peft loop: {base_rate:.2f} steps/s, peak RSS {base_rss / 2**20:.0f} MiB")
        print(
            f"    speed ratio {ours_rate / base_rate:.2f}x (target >= 1.0), memory ratio {ours_rss / base_rss:.2f}x "
            f"(target <= 1.0); best of {args.repeats}, steady rate after 3 warm-up steps"
        )
        # Second-epoch speed-up: 2 images x 10 repeats = 20 steps per epoch, two epochs.
        small = root / "small"
        small.mkdir()
        import shutil

        shutil.copytree(dataset, small / "0001-dataset")
        subset = small / "0001-dataset" / "20_dwjz toy"
        for image in sorted(subset.glob("*.png"))[2:]:
            image.unlink()
            image.with_suffix(".txt").unlink()
        subset.rename(subset.with_name("10_dwjz toy"))
        epochs = {}
        for cache in ("true", "false"):
            run = _lorapipe(
                small / "0001-dataset",
                model,
                root / f"cache-{cache}",
                "max_train_epochs=2",
                f"cache_latents={cache}",
                "save_every_n_epochs=0",
            )
            epochs[cache] = run["seconds_per_epoch"][:2]
            print(f"[2] cache_latents={cache}: epoch 1 {epochs[cache][0]:.2f} s, epoch 2 {epochs[cache][1]:.2f} s")
        print(
            f"    second-epoch speed-up from cache_latents: {epochs['false'][1] / epochs['true'][1]:.2f}x "
            "(epoch 2 without / with the cache; the cache fills lazily, so repeats already hit it in epoch 1)"
        )


if __name__ == "__main__":
    main()
