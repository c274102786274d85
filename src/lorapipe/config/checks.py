"""Cross-option rules sd-scripts enforces (asserts in train_util / sdxl_train_network), checked before any model loads.

Each rule returns error or warning lines naming the keys involved; `check_config` gathers them all so a user fixes
every problem in one pass rather than one per GPU start.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lorapipe.config.model import TrainConfig

# Subset options that change the caption from one epoch to the next, so text-encoder outputs cannot be cached
# (sd-scripts: BaseDataset.is_text_encoder_output_cacheable).
CAPTION_RANDOMISERS = (
    "shuffle_caption",
    "caption_dropout_rate",
    "caption_dropout_every_n_epochs",
    "caption_tag_dropout_rate",
    "token_warmup_step",
)
# Subset options that change the pixels per epoch, so latents cannot be cached (is_latent_cacheable).
_PIXEL_RANDOMISERS = ("color_aug", "random_crop")


def apply_implied(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """`*_to_disk` caching implies the in-memory caching flag, as sd-scripts sets it."""
    changes: dict[str, Any] = {}
    notes: list[str] = []
    if config.cache_latents_to_disk and not config.cache_latents:
        changes["cache_latents"] = True
    if config.cache_text_encoder_outputs_to_disk and not config.cache_text_encoder_outputs:
        changes["cache_text_encoder_outputs"] = True
        notes.append("cache_text_encoder_outputs_to_disk turns on cache_text_encoder_outputs (as in sd-scripts)")
    return (dataclasses.replace(config, **changes) if changes else config), notes


def check_config(config: TrainConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings) for option combinations; messages start with the keys at fault."""
    errors: list[str] = []
    warnings: list[str] = []
    c = config
    if c.network_train_unet_only and c.network_train_text_encoder_only:
        errors.append(
            "network_train_unet_only and network_train_text_encoder_only are both true, so nothing "
            "would train; keep at most one"
        )
    if c.cache_text_encoder_outputs and not c.network_train_unet_only:
        errors.append(
            "cache_text_encoder_outputs: the text-encoder LoRA cannot train on cached text-encoder "
            "outputs; set network_train_unet_only = true or turn caching off"
        )
    for subset, key in subset_options(c.dataset, CAPTION_RANDOMISERS):
        if c.cache_text_encoder_outputs:
            errors.append(
                f"cache_text_encoder_outputs cannot be used with {key} (subset '{subset}'): captions "
                f"change every epoch; turn one of them off"
            )
    for subset, key in subset_options(c.dataset, _PIXEL_RANDOMISERS):
        if c.cache_latents:
            errors.append(
                f"cache_latents cannot be used with {key} (subset '{subset}'): the image changes every "
                f"epoch; turn one of them off"
            )
    if (c.save_every_n_epochs or 0) > 0 and (c.save_every_n_steps or 0) > 0:
        errors.append("save_every_n_epochs and save_every_n_steps are both set; keep one")
    if c.full_fp16 and c.full_bf16:
        errors.append("full_fp16 and full_bf16 are both true; keep one")
    elif c.full_fp16 and c.mixed_precision != "fp16":
        errors.append('full_fp16 needs mixed_precision = "fp16"')
    elif c.full_bf16 and c.mixed_precision != "bf16":
        errors.append('full_bf16 needs mixed_precision = "bf16"')
    if (c.fp8_base or c.fp8_base_unet) and c.mixed_precision not in ("fp16", "bf16"):
        key = "fp8_base" if c.fp8_base else "fp8_base_unet"
        errors.append(
            f'{key} needs mixed_precision = "bf16" or "fp16" (the dtype each fp8-stored layer is computed in)'
        )
    if c.scale_v_pred_loss_like_noise_pred and not c.v_parameterization:
        errors.append("scale_v_pred_loss_like_noise_pred works only with v_parameterization = true")
    if c.adaptive_noise_scale is not None and c.noise_offset is None:
        errors.append("adaptive_noise_scale needs noise_offset; set noise_offset too")
    if c.lycoris is not None and c.dim_from_weights:
        errors.append(
            'dim_from_weights with network_module = "lycoris.kohya": lorapipe reads ranks from Kohya '
            "networks.lora files only; set network_dim/conv_dim to the file's ranks instead"
        )
    if c.dim_from_weights and not c.network_weights:
        errors.append("dim_from_weights = true needs network_weights (the LoRA whose ranks to take)")
    if c.masked_loss and not any(s.alpha_mask for s in c.dataset.subsets):
        errors.append(
            "masked_loss = true needs masks: set alpha_mask = true (the images' alpha channel is the mask; "
            "conditioning_data_dir mask images are not supported)"
        )
    errors.extend(_timestep_errors(c))
    errors.extend(_scheduler_errors(c))
    warnings.extend(_advice(c))
    return errors, warnings


def subset_options(dataset, keys: tuple[str, ...]) -> list[tuple[str, str]]:
    """(subset name, key) for every subset of the dataset blueprint where one of `keys` is switched on."""
    found: list[tuple[str, str]] = []
    subsets = getattr(dataset, "subsets", ()) or ()
    for subset in subsets:
        for key in keys:
            value = getattr(subset, key, None)
            if value:
                found.append((getattr(subset, "name", str(subset)), key))
    return found


def _timestep_errors(c: TrainConfig) -> list[str]:
    errors = []
    low = 0 if c.min_timestep is None else c.min_timestep
    high = 1000 if c.max_timestep is None else c.max_timestep
    if low > 999:
        errors.append(f"min_timestep = {low} must be 0..999")
    if high > 1000:
        errors.append(f"max_timestep = {high} must be 1..1000 (it is exclusive)")
    if low >= high:
        errors.append(f"min_timestep {low} must be below max_timestep {high}")
    return errors


def _scheduler_errors(c: TrainConfig) -> list[str]:
    errors = []
    if c.lr_scheduler == "constant" and c.lr_warmup_steps:
        errors.append(
            'lr_warmup_steps needs a warm-up schedule: lr_scheduler "constant" has none (sd-scripts '
            'refuses it); use "constant_with_warmup" or set lr_warmup_steps = 0'
        )
    if c.lr_scheduler.startswith("adafactor") and c.optimizer_type != "Adafactor":
        errors.append('lr_scheduler "adafactor" works only with optimizer_type = "Adafactor"')
    return errors


def _advice(c: TrainConfig) -> list[str]:
    notes = []
    if c.clip_skip is not None:
        notes.append(
            f"clip_skip = {c.clip_skip} has no effect on SDXL training (sd-scripts ignores it too: the "
            f"text encoders' layers are fixed); it is only recorded in the LoRA metadata"
        )
    if c.mixed_precision == "fp16" and not c.no_half_vae:
        notes.append(
            'mixed_precision = "fp16" without no_half_vae: SDXL\'s VAE often overflows in fp16 (NaN '
            "latents, black samples); set no_half_vae = true or use bf16"
        )
    wants_samples = (c.sample_every_n_steps or 0) > 0 or (c.sample_every_n_epochs or 0) > 0 or c.sample_at_first
    if wants_samples and not c.sample_prompts:
        notes.append(
            "sample_every_n_steps/sample_every_n_epochs/sample_at_first are set but sample_prompts is "
            "not, so no sample images are made"
        )
    if c.zero_terminal_snr and not c.v_parameterization:
        notes.append(
            "zero_terminal_snr without v_parameterization: the last timestep then has no signal to "
            "predict noise from (sd-scripts warns the same)"
        )
    if c.v_pred_like_loss and c.v_parameterization:
        notes.append(
            "v_pred_like_loss is meant for noise-prediction training; with v_parameterization it only "
            "re-weights the loss"
        )
    if c.torch_compile and c.dynamo_backend == "no":
        notes.append(
            'torch_compile = true with dynamo_backend = "no" compiles nothing (as in sd-scripts); set '
            'dynamo_backend = "inductor" to compile the UNet'
        )
    if c.sample_every_n_epochs and c.sample_every_n_steps:
        notes.append("sample_every_n_epochs and sample_every_n_steps are both set; epochs win (as in sd-scripts)")
    return notes
