"""The models of one run: base SDXL parts in their training dtypes, the LoRA attached, and the two encoders
(VAE pixels -> latents, captions -> context + pooled) the step and the caches call."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from lorapipe.errors import ConfigError
from lorapipe.lora.from_weights import file_module_ranks
from lorapipe.lora.lycoris_network import attach_lycoris, plain_lora
from lorapipe.lora.network import attach_kohya_lora
from lorapipe.lora.ranks import BlockRanks
from lorapipe.sdxl.constants import VAE_SCALE_FACTOR
from lorapipe.sdxl.load import load_sdxl_pipeline
from lorapipe.train.fp8 import fp8_parts, store_base_in_fp8
from lorapipe.train.text_encoding import encode_prompts

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainModels:
    """Mutable holder of the live models (they change as they train); never handed to another stage."""

    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    network: Any
    device: torch.device
    weight_dtype: torch.dtype
    vae_dtype: torch.dtype
    train_text_encoder: bool
    max_token_length: int

    def encode_pixels(self, pixels: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> scaled latents (B, 4, H/8, W/8); samples the latent distribution as sd-scripts."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        vae_device = next(self.vae.parameters()).device  # the VAE may have been offloaded after caching
        x = x.to(vae_device, self.vae_dtype)
        if generator is not None and generator.device != vae_device:
            generator = torch.Generator(device=vae_device).manual_seed(generator.initial_seed())
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            latents = dist.sample(generator=generator) if generator is not None else dist.mean
        latents = torch.nan_to_num(latents.float(), nan=0.0) * VAE_SCALE_FACTOR  # sd-scripts zeroes NaN latents
        return latents.to(self.device)

    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and pooled vector; with grad when the text-encoder LoRA trains."""
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            out = encode_prompts(
                self.text_encoder,
                self.text_encoder_2,
                self.tokenizer,
                self.tokenizer_2,
                captions,
                self.max_token_length,
            )
        return out.context, out.pooled

    @property
    def te1_width(self) -> int:
        return int(self.text_encoder.config.hidden_size)


@dataclass(frozen=True)
class SpeedOptions:
    """Speed switches that are not Kohya keys (Kohya's torch_compile/dynamo_backend are read from the config
    too)."""

    channels_last: bool = False
    compile_unet: bool = False
    # Cache text-encoder outputs when that cannot change the result (frozen encoders, fixed captions); off only
    # to compare against encoding every step.
    cache_text_automatically: bool = True


def training_dtypes(
    mixed_precision: str, *, full_fp16: bool, full_bf16: bool, no_half_vae: bool, device_type: str
) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """(frozen weight dtype, LoRA parameter dtype, VAE dtype) as sd-scripts' `prepare_dtype` decides them."""
    weight = _DTYPES[mixed_precision]  # choices and the full_* pairing are checked at config load
    if device_type == "cpu" and weight == torch.float16:
        raise ConfigError('mixed_precision: fp16 is not supported on a CPU run; use "no" or "bf16"')
    lora = weight if (full_fp16 or full_bf16) else torch.float32
    vae = torch.float32 if (no_half_vae or weight == torch.float32) else weight
    return weight, lora, vae


def _network_weights(cfg):
    """The tensors of network_weights (None without it)."""
    if not cfg.network_weights:
        return None
    return load_file(str(cfg.network_weights))


def _ranks_from_weights(weights, unet, te1, te2, cfg) -> dict[str, tuple[int, float]]:
    """sd-scripts' create_network_from_weights for training: every module the file has, at its rank and alpha,
    within the parts this run trains."""
    return file_module_ranks(unet, te1, te2, weights, source=f"network_weights {cfg.network_weights}")


def _attach_network(cfg, unet, te1, te2, weights, *, seed: int, lora_dtype) -> Any:
    """The network `network_module` names: Kohya's networks.lora (peft layers) or lycoris.kohya (LyCORIS modules;
    peft layers on the preset's layers when the LyCORIS network is plain LoRA)."""
    plain = plain_lora(cfg.lycoris, network_dim=cfg.network_dim, network_alpha=cfg.network_alpha)
    if plain is not None:
        return attach_kohya_lora(
            unet,
            te1,
            te2,
            network_dim=cfg.network_dim,
            network_alpha=cfg.network_alpha,
            conv_dim=plain.conv_dim,
            conv_alpha=plain.conv_alpha,
            train_unet=cfg.train_unet,
            train_text_encoder=cfg.train_text_encoder,
            seed=seed,
            lora_dtype=lora_dtype,
            target_classes=plain.classes,
        )
    if cfg.lycoris is not None:
        return attach_lycoris(
            unet,
            te1,
            te2,
            cfg.lycoris,
            network_dim=cfg.network_dim,
            network_alpha=cfg.network_alpha,
            train_unet=cfg.train_unet,
            train_text_encoder=cfg.train_text_encoder,
            seed=seed,
            lora_dtype=lora_dtype,
        )
    opts = cfg.network_options
    block_ranks = BlockRanks.parse(opts.block_dims, opts.block_alphas, opts.conv_block_dims, opts.conv_block_alphas)
    return attach_kohya_lora(
        unet,
        te1,
        te2,
        network_dim=cfg.network_dim,
        network_alpha=cfg.network_alpha,
        conv_dim=cfg.conv_dim,
        conv_alpha=cfg.conv_alpha,
        dropout=cfg.network_dropout,
        train_unet=cfg.train_unet,
        train_text_encoder=cfg.train_text_encoder,
        seed=seed,
        lora_dtype=lora_dtype,
        rank_dropout=opts.rank_dropout,
        module_dropout=opts.module_dropout,
        block_ranks=block_ranks,
        module_ranks=_ranks_from_weights(weights, unet, te1, te2, cfg) if cfg.dim_from_weights else None,
    )


def load_train_models(
    cfg,
    base_model: str,
    device: torch.device,
    *,
    max_token_length: int,
    seed: int,
    speed: SpeedOptions = SpeedOptions(),
) -> TrainModels:
    """Load the base model, put each part in its dtype/device, freeze it and attach the Kohya LoRA."""
    weight_dtype, lora_dtype, vae_dtype = training_dtypes(
        cfg.mixed_precision or "no",
        full_fp16=cfg.full_fp16,
        full_bf16=cfg.full_bf16,
        no_half_vae=cfg.no_half_vae,
        device_type=device.type,
    )
    fp8 = fp8_parts(cfg.fp8_base, cfg.fp8_base_unet)
    # fp8 parts reach the device only once stored in fp8 (never at full width there); random weights are built
    # where they go, in the training dtype.
    pipe = load_sdxl_pipeline(base_model, random_device=None if fp8 else device, random_dtype=weight_dtype)
    unet, vae = pipe.unet, pipe.vae
    te1, te2 = pipe.text_encoder, pipe.text_encoder_2
    train_te = cfg.train_text_encoder
    parts = {"unet": unet, "text_encoder": te1, "text_encoder_2": te2}
    for model in (unet, te1, te2, vae):
        model.requires_grad_(False)
    for name, model in parts.items():
        model.to(device=None if name in fp8 else device, dtype=weight_dtype)
    if fp8:  # before the network attaches, so LoRA/LyCORIS modules are made on the device like everything else
        store_base_in_fp8(parts, fp8, weight_dtype)
        for name in fp8:
            parts[name].to(device)
    vae.to(device, vae_dtype)
    vae.eval()
    weights = _network_weights(cfg)
    network = _attach_network(cfg, unet, te1, te2, weights, seed=seed, lora_dtype=lora_dtype)
    if weights is not None:
        report = network.load_kohya_state_dict(weights, source=str(cfg.network_weights))
        if report.missing or report.unexpected:  # sd-scripts prints the same counts and carries on
            print(
                f"warning: network_weights {cfg.network_weights}: {report.loaded} modules loaded, "
                f"{len(report.missing)} left at their initial values, {len(report.unexpected)} keys unused",
                file=sys.stderr,
            )
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train_te:
            te1.gradient_checkpointing_enable()
            te2.gradient_checkpointing_enable()
    if speed.channels_last:
        unet.to(memory_format=torch.channels_last)
    compile_backend = cfg.dynamo_backend if cfg.torch_compile and cfg.dynamo_backend != "no" else None
    if speed.compile_unet or compile_backend:
        # In place: the module object (and its LoRA layers) stays the same.
        unet.compile(backend=compile_backend or "inductor")
    # The frozen base stays in eval mode: its dropouts are p=0 anyway, but in train mode torch still draws a
    # mask for each of them every step. Only the LoRA layers are in train mode (network_dropout reads it).
    for model in (unet, te1, te2):
        model.eval()
    if cfg.gradient_checkpointing and train_te:  # transformers only checkpoints layers in train mode
        te1.train()
        te2.train()
    network.train_mode()
    return TrainModels(
        unet=unet,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        network=network,
        device=device,
        weight_dtype=weight_dtype,
        vae_dtype=vae_dtype,
        train_text_encoder=train_te,
        max_token_length=max_token_length,
    )
