"""Every GPU figure of lorapipe in one time-boxed run (see bench/gpu/RESULTS.md); `bench/gpu/run.sh` calls it.

Steps (each in its own process with its own timeout on a GPU, so one OOM or hang costs only its step and each peak
VRAM figure is that step's own; in-process on the CPU dry run, which only proves the steps still run):
  train-fast       lorapipe train, 1024x1024, batch 1, dim 32, bf16, cached latents + TE outputs, channels_last, SDPA
  train-fast-compiled   the same with torch.compile of the U-Net (time allowing)
  train-checkpointing   train-fast + gradient checkpointing (what checkpointing alone saves)
  train-low-memory  + gradient checkpointing + AdamW8bit
  train-fp8        + fp8_base (U-Net and text encoders stored in float8_e4m3fn) + checkpointing + AdamW8bit
  train-diffusers  the peer baseline: a plain diffusers + peft LoRA step (diffusers' train_dreambooth_lora_sdxl core)
  generate / generate-diffusers (+ -compiled): 1024x1024, 30 steps, CFG 7, one fused rank-32 LoRA, s/image
  memory-estimates the per-option memory savings the OOM advice quotes (meta-device parameter sizes)
Writes OUT/gpu-check.json (all figures, ratios against the diffusers baselines) and OUT/memory_savings.json: the
estimates, with each option the profiles isolate replaced by its measured difference of peak VRAM (copy it over
src/lorapipe/train/memory_savings.json to ship it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOTAL_SECONDS = 450  # the whole run (run.sh adds the install) stays inside 8 minutes
COMMON = (
    "mixed_precision=bf16",
    "network_dim=32",
    "network_alpha=16",
    "cache_latents=true",
    "cache_text_encoder_outputs=true",
    "network_train_unet_only=true",
    "enable_bucket=false",
    "train_batch_size=1",
    "save_every_n_epochs=0",
    "save_precision=bf16",
    "seed=1",
    "sample_prompts=",
    "sample_every_n_steps=0",
    "sample_every_n_epochs=0",
    "sample_at_first=false",
    "no_half_vae=false",
)
LOW_MEMORY = ("gradient_checkpointing=true", "optimizer_type=AdamW8bit")
# name -> (kind, extra overrides, compile, seconds allowed on a GPU)
STEPS = {
    "memory-estimates": ("estimates", (), False, 60),
    "train-fast": ("train", ("gradient_checkpointing=false", "optimizer_type=AdamW"), False, 70),
    "train-checkpointing": ("train", ("gradient_checkpointing=true", "optimizer_type=AdamW"), False, 70),
    "train-low-memory": ("train", LOW_MEMORY, False, 70),
    "train-fp8": ("train", LOW_MEMORY + ("fp8_base=true",), False, 90),  # built on the CPU, then fp8 to the GPU
    "train-diffusers": ("train-baseline", (), False, 60),
    "generate": ("generate", (), False, 60),
    "generate-diffusers": ("generate-baseline", (), False, 60),
    "generate-compiled": ("generate", (), True, 150),
    "train-fast-compiled": ("train", ("gradient_checkpointing=false", "optimizer_type=AdamW"), True, 120),
    "generate-diffusers-compiled": ("generate-baseline", (), True, 150),
}


class Scale:
    """Full size on a GPU; the tiny preset at toy sizes on the CPU dry run."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.model = "random:tiny" if dry_run else "random:full"
        self.size = 64 if dry_run else 1024
        self.train_steps = 6 if dry_run else 23  # 3 warm-up steps, then the steady rate
        self.gen_steps = 2 if dry_run else 30
        self.repeats = 1 if dry_run else 3
        self.device = "cpu" if dry_run else "cuda"
        self.gen_dtype = "fp32" if dry_run else "fp16"


# ---- steps ---------------------------------------------------------------------------------------------------
def step_train(scale: Scale, work: Path, extra: tuple[str, ...], compile_unet: bool) -> dict:
    from lorapipe.train.models import SpeedOptions
    from lorapipe.train.run import run_training

    notes = []
    if scale.dry_run and "optimizer_type=AdamW8bit" in extra:
        # bitsandbytes' 8-bit optimizers need CUDA; the dry run takes lorapipe's same path with AdamW.
        extra = tuple("optimizer_type=AdamW" if e == "optimizer_type=AdamW8bit" else e for e in extra)
        notes.append("substituted: optimizer_type AdamW8bit -> AdamW (bitsandbytes needs CUDA)")
    if scale.dry_run and compile_unet:
        notes.append("substituted: torch.compile backend inductor -> eager (no compiler on the dry run)")
    overrides = (
        COMMON
        + extra
        + (
            f"max_train_steps={scale.train_steps}",
            f"resolution={scale.size},{scale.size}",
            f"min_bucket_reso={min(256, scale.size)}",
            f"max_bucket_reso={scale.size}",
        )
    )
    if scale.dry_run and compile_unet:
        overrides += ("torch_compile=true", "dynamo_backend=eager")
    speed = SpeedOptions(channels_last=not scale.dry_run, compile_unet=compile_unet and not scale.dry_run)
    result = run_training(
        _dataset(work, scale.size),
        base_model=scale.model,
        output_dir=work / "out",
        overrides=overrides,
        show_progress=False,
        step_lines=False,
        speed=speed,
    )
    summary = json.loads(result.summary_path.read_text())
    return {
        "it_per_s": summary["steps_per_second_steady"],
        "peak_vram_bytes": summary["memory"].get("peak_gpu_allocated_bytes"),
        "final_loss": result.final_loss,
        "notes": notes,
        "lora": str(result.lora_path),
    }


def step_train_baseline(scale: Scale, work: Path) -> dict:
    """diffusers' train_dreambooth_lora_sdxl step on cached inputs: peft LoRA (rank 32, alpha 16) on the attention
    projections, AdamW, bf16 autocast; the same U-Net weights as lorapipe's run."""
    import torch
    from peft import LoraConfig

    from lorapipe.sdxl.load import load_sdxl_pipeline

    device = torch.device(scale.device)
    dtype = torch.bfloat16
    pipe = load_sdxl_pipeline(scale.model, random_device=device, random_dtype=dtype)
    unet, scheduler = pipe.unet, pipe.scheduler
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=32, lora_alpha=16, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # diffusers' cast_training_params
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    latent = scale.size // 8
    generator = torch.Generator(device).manual_seed(0)
    latents = torch.randn(1, 4, latent, latent, device=device, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype, generator=generator)
    pooled = torch.randn(1, pipe.text_encoder_2.config.projection_dim, device=device, dtype=dtype, generator=generator)
    time_ids = torch.tensor([[scale.size, scale.size, 0, 0, scale.size, scale.size]], device=device, dtype=dtype)
    stamps = []
    for _ in range(scale.train_steps):
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (1,), device=device)
        with torch.autocast(device.type, dtype=dtype):
            pred = unet(
                scheduler.add_noise(latents, noise, t),
                t,
                context,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            ).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        stamps.append(time.perf_counter())
    steady = (len(stamps) - 4) / (stamps[-1] - stamps[3]) if len(stamps) > 4 else None
    return {
        "it_per_s": steady,
        "peak_vram_bytes": _peak(device),
        "notes": ["LoRA on to_q/to_k/to_v/to_out.0 only (diffusers' script); lorapipe trains Kohya's full module set"],
    }


def step_generate(scale: Scale, work: Path, compile_unet: bool, *, baseline: bool) -> dict:
    import torch

    lora_dir = work / "loras"
    lora_dir.mkdir()
    request_prompt = "a photo of a subject, detailed"
    notes = []
    if baseline:
        from lorapipe.sdxl.load import load_sdxl_pipeline

        pipe = load_sdxl_pipeline(scale.model, dtype=scale.gen_dtype, random_device=scale.device)
        _write_lora(pipe, lora_dir)
        pipe.load_lora_weights(str(lora_dir), weight_name="subject.safetensors")
        pipe.fuse_lora(lora_scale=0.8)
        pipe.set_progress_bar_config(disable=True)

        def once(seed):
            pipe(
                request_prompt,
                negative_prompt="blurry",
                num_inference_steps=scale.gen_steps,
                guidance_scale=7.0,
                width=scale.size,
                height=scale.size,
                generator=torch.Generator("cpu").manual_seed(seed),
            )
    else:
        from lorapipe.generate.generator import GenerationRequest, Generator

        generator = Generator.load(
            scale.model, lora_dir=lora_dir, device=scale.device, dtype=scale.gen_dtype, hash_model=False
        )
        pipe = generator.pipe
        _write_lora(pipe, lora_dir)

        def once(seed):
            generator.generate(
                GenerationRequest(
                    f"{request_prompt} <lora:subject:0.8>",
                    negative_prompt="blurry",
                    steps=scale.gen_steps,
                    width=scale.size,
                    height=scale.size,
                    seed=seed,
                    cfg_scale=7.0,
                    sampler_name="Euler",
                )
            )

    if not scale.dry_run:
        pipe.unet.to(memory_format=torch.channels_last)
    if compile_unet:
        backend = "eager" if scale.dry_run else "inductor"
        if scale.dry_run:
            notes.append("substituted: torch.compile backend inductor -> eager (no compiler on the dry run)")
        pipe.unet.compile(backend=backend)
    device = torch.device(scale.device)
    started = time.perf_counter()
    once(0)  # warm-up: LoRA fuse, cuDNN autotune, compilation
    _sync(device)
    warmup = time.perf_counter() - started
    times = []
    for seed in range(1, 1 + scale.repeats):
        started = time.perf_counter()
        once(seed)
        _sync(device)
        times.append(time.perf_counter() - started)
    return {
        "s_per_image": sorted(times)[len(times) // 2],
        "warmup_s": warmup,
        "peak_vram_bytes": _peak(device),
        "notes": notes,
    }


def step_estimates(scale: Scale, work: Path, out: Path) -> dict:
    from lorapipe.train.memory_savings import estimate_savings

    table = estimate_savings(network_dim=32)
    (out / "memory_savings.json").write_text(json.dumps(table, indent=2) + "\n")
    return {"options": {k: v["bytes"] for k, v in table["options"].items()}, "notes": []}


# ---- helpers -------------------------------------------------------------------------------------------------
def _dataset(work: Path, size: int) -> Path:
    """The sample dataset with every image resized to size x size (sizes are what cost, not content)."""
    from PIL import Image

    from lorapipe.dataset.sample import write_sample_dataset

    dataset = write_sample_dataset(work / "data")
    for image in dataset.rglob("*.png"):
        Image.open(image).convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(image)
    return dataset


def _write_lora(pipe, lora_dir: Path) -> None:
    """One rank-32 Kohya LoRA with non-zero weights over the pipeline's own modules."""
    sys.path.insert(0, str(ROOT / "tests"))
    from generate_fixtures import write_kohya_lora_for

    models = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    write_kohya_lora_for(models, lora_dir / "subject.safetensors", seed=1, rank=32, scale=0.01)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None


def run_step(name: str, scale: Scale, out: Path) -> dict:
    kind, extra, compile_unet, _ = STEPS[name]
    with tempfile.TemporaryDirectory(prefix=f"lorapipe-{name}-") as tmp:
        work = Path(tmp)
        if kind == "train":
            return step_train(scale, work, extra, compile_unet)
        if kind == "train-baseline":
            return step_train_baseline(scale, work)
        if kind in ("generate", "generate-baseline"):
            return step_generate(scale, work, compile_unet, baseline=kind == "generate-baseline")
        return step_estimates(scale, work, out)


# ---- orchestration -------------------------------------------------------------------------------------------
def _in_child(name: str, scale: Scale, out: Path, seconds: float, log) -> dict:
    """Run one step in a fresh process (own CUDA context and peak memory), killed after `seconds`."""
    cmd = [sys.executable, __file__, "--step", name, "--out", str(out)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=seconds, env=os.environ)
    except subprocess.TimeoutExpired as exc:
        log.write((exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
        return {"status": "timeout", "seconds": round(time.perf_counter() - started, 1)}
    log.write(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "error": tail[0][:300], "seconds": round(time.perf_counter() - started, 1)}
    return json.loads(lines[-1].removeprefix("RESULT "))


def _in_process(name: str, scale: Scale, out: Path) -> dict:
    started = time.perf_counter()
    try:
        result = run_step(name, scale, out)
    except Exception as exc:  # noqa: BLE001 - the report names every failed step; the next step still runs
        traceback.print_exc()
        return {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}"[:300],
            "seconds": round(time.perf_counter() - started, 1),
        }
    return {"status": "ok", "seconds": round(time.perf_counter() - started, 1), **result}


def _ratios(results: dict) -> dict:
    """lorapipe over the diffusers baseline: speed-ups (>1 = lorapipe faster) and memory fractions."""

    def get(step, key):
        return results.get(step, {}).get(key)

    ratios = {}
    base_rate = get("train-diffusers", "it_per_s")
    for step in ("train-fast", "train-fast-compiled", "train-low-memory", "train-fp8"):
        if get(step, "it_per_s") and base_rate:
            ratios[f"{step} it/s vs train-diffusers"] = round(get(step, "it_per_s") / base_rate, 3)
    for ours, theirs in (
        ("generate", "generate-diffusers"),
        ("generate-compiled", "generate-diffusers-compiled"),
        ("generate-compiled", "generate-diffusers"),
    ):
        if get(ours, "s_per_image") and get(theirs, "s_per_image"):
            ratios[f"{ours} speed-up vs {theirs}"] = round(get(theirs, "s_per_image") / get(ours, "s_per_image"), 3)
    return ratios


# option in the savings table -> (peak VRAM without it, peak VRAM with it): consecutive profiles differ by that option.
_MEASURED_BY = {
    "gradient_checkpointing": ("train-fast", "train-checkpointing"),
    'optimizer_type = "AdamW8bit"': ("train-checkpointing", "train-low-memory"),
    # text-encoder outputs are cached, so the encoders are off the GPU: the difference is the U-Net's share
    "fp8_base_unet": ("train-low-memory", "train-fp8"),
}


def measured_savings(results: dict, out: Path, device: str) -> dict:
    """OUT/memory_savings.json: the estimates, with each option the profiles isolate replaced by its measured
    saving (a difference of peak allocated VRAM between two profiles of this run)."""
    path = out / "memory_savings.json"
    table = json.loads(path.read_text())
    measured = {}
    for option, (without, with_it) in _MEASURED_BY.items():
        before, after = (results.get(step, {}).get("peak_vram_bytes") for step in (without, with_it))
        if before and after:
            table["options"][option] = {
                "bytes": before - after,
                "source": f"measured on {device}: peak VRAM {without} minus {with_it}",
            }
            measured[option] = before - after
    if measured:
        table["measured_on"] = device
        path.write_text(json.dumps(table, indent=2) + "\n")
    return measured


def orchestrate(scale: Scale, out: Path, skip: tuple[str, ...] = ()) -> dict:
    import torch

    deadline = time.perf_counter() + TOTAL_SECONDS
    report = {
        "dry_run": scale.dry_run,
        "model": scale.model,
        "size": scale.size,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "steps": {},
    }
    with (out / "gpu-check-steps.log").open("a") as log:
        for name, (_, _, _, seconds) in STEPS.items():
            left = deadline - time.perf_counter()
            if name in skip:
                report["steps"][name] = {"status": "skipped", "reason": "--skip"}
                continue
            if not scale.dry_run and left < seconds * 0.6:
                report["steps"][name] = {"status": "skipped", "reason": f"{left:.0f} s left of the time box"}
                continue
            print(f"== {name}", flush=True)
            result = (
                _in_process(name, scale, out) if scale.dry_run else _in_child(name, scale, out, min(seconds, left), log)
            )
            report["steps"][name] = result
            print(f"   {json.dumps(result)}", flush=True)
            (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")  # partial results survive
    report["ratios"] = _ratios(report["steps"])
    if (out / "memory_savings.json").is_file():
        report["measured_savings_bytes"] = measured_savings(report["steps"], out, report["device"])
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with the tiny preset")
    parser.add_argument("--step", choices=sorted(STEPS), help="run one step and print its RESULT line")
    parser.add_argument("--skip", nargs="*", default=(), choices=sorted(STEPS), help="steps not to run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scale = Scale(args.dry_run)
    if args.step:
        result = _in_process(args.step, scale, args.out)
        print("RESULT " + json.dumps(result), flush=True)
        return 0 if result["status"] == "ok" else 1
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    report = orchestrate(scale, args.out, skip=tuple(args.skip))
    failed = [name for name, r in report["steps"].items() if r.get("status") == "failed"]
    print(json.dumps(report["ratios"], indent=2))
    print(f"failed steps: {', '.join(failed)}" if failed else "all steps ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
