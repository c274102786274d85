"""Preview images during training (sd-scripts sample_images): the training models with the LoRA active, Kohya's
sampler names, files under `output_dir/sample/` named as sd-scripts names them."""

from __future__ import annotations

from pathlib import Path

import torch

from lorapipe.atomic import atomic_target
from lorapipe.sdxl.constants import BETA_END, BETA_SCHEDULE, BETA_START, NUM_TRAIN_TIMESTEPS
from lorapipe.train.naming import sample_image_name
from lorapipe.train.sample_prompts import SamplePrompt

# Kohya sample_sampler names -> (diffusers scheduler class, extra config).
SAMPLERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "k_lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "k_euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "k_euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "k_dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
}


def make_sample_scheduler(name: str | None, *, v_parameterization: bool = False):
    """A diffusers scheduler for a Kohya sampler name; unknown names fall back to DDIM as in sd-scripts."""
    import diffusers

    class_name, extra = SAMPLERS.get((name or "ddim").lower(), SAMPLERS["ddim"])
    cls = getattr(diffusers, class_name)
    config = dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BETA_SCHEDULE,
        prediction_type="v_prediction" if v_parameterization else "epsilon",
        **extra,
    )
    if class_name in ("DDIMScheduler", "DDPMScheduler"):
        config["clip_sample"] = False
    if class_name in ("DDIMScheduler", "PNDMScheduler"):
        config["steps_offset"] = 1
    if class_name == "PNDMScheduler":
        config["skip_prk_steps"] = True
    return cls(**config)


def write_sample_images(
    models,
    prompts: list[SamplePrompt],
    out_dir: Path,
    *,
    output_name: str | None,
    epoch: int | None,
    step: int,
    default_sampler: str | None,
    v_parameterization: bool,
    fallback_seed: int,
    device,
) -> list[Path]:
    """Generate one PNG per prompt with the current weights; returns the written paths.

    `models` is anything with unet, vae, text_encoder(_2), tokenizer(_2). Global RNG state is saved and restored
    so previews never change the training's random stream.
    """
    from diffusers import StableDiffusionXLPipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    written = []
    lora_modes = {m: m.training for m in models.unet.modules()}
    models.unet.eval()
    # The VAE and text encoders may have been moved off the GPU after caching; bring them back for the previews.
    parked = {
        name: next(getattr(models, name).parameters()).device for name in ("vae", "text_encoder", "text_encoder_2")
    }
    for name in parked:
        getattr(models, name).to(device)
    try:
        for index, prompt in enumerate(prompts):
            scheduler = make_sample_scheduler(prompt.sampler or default_sampler, v_parameterization=v_parameterization)
            pipe = StableDiffusionXLPipeline(
                vae=models.vae,
                text_encoder=models.text_encoder,
                text_encoder_2=models.text_encoder_2,
                tokenizer=models.tokenizer,
                tokenizer_2=models.tokenizer_2,
                unet=models.unet,
                scheduler=scheduler,
            )
            pipe.set_progress_bar_config(disable=True)
            seed = prompt.seed if prompt.seed is not None else fallback_seed + index
            generator = torch.Generator(device="cpu").manual_seed(seed)
            with torch.no_grad():
                latents = pipe(
                    prompt.prompt,
                    negative_prompt=prompt.negative_prompt or None,
                    width=prompt.width,
                    height=prompt.height,
                    num_inference_steps=prompt.steps,
                    guidance_scale=prompt.scale,
                    generator=generator,
                    original_size=(prompt.height, prompt.width),
                    target_size=(prompt.height, prompt.width),
                    output_type="latent",
                ).images
                image = _decode(pipe, latents)
            name = sample_image_name(output_name, epoch=epoch, step=step, prompt_index=index, seed=prompt.seed)
            path = out_dir / name
            with atomic_target(path, suffix=".png") as tmp:  # PIL picks the format from the suffix
                image.save(tmp)
            written.append(path)
    finally:
        for name, where in parked.items():
            getattr(models, name).to(where)
        for module, mode in lora_modes.items():
            module.training = mode
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    return written


def _decode(pipe, latents: torch.Tensor):
    """Decode in the VAE's own dtype: with no_half_vae the VAE stays fp32 while the UNet's latents are bf16/fp16,
    which diffusers' SDXL pipeline only reconciles for an fp16 VAE."""
    vae = pipe.vae
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(pixels, output_type="pil")[0]
