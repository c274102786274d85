"""Write an SDXL pipeline as one checkpoint in the original SGM layout (as AUTOMATIC1111 and Kohya users keep it).

diffusers reads such files (`from_single_file`) but ships no writer, so this module holds the reverse mapping:
diffusers parameter names -> SGM names for the UNet (via `sgm_names`), the VAE (LDM autoencoder layout), the
first text encoder (HF CLIP under `conditioner.embedders.0.transformer.`) and the second (OpenCLIP layout with
fused attention projections under `conditioner.embedders.1.model.`). The diffusers configs travel in the file's
metadata so that a non-standard (tiny) architecture loads back without any network access.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lorapipe.atomic import atomic_target
from lorapipe.sdxl.constants import SGM_TE1_PREFIX, SGM_TE2_PREFIX, SGM_UNET_PREFIX, SGM_VAE_PREFIX
from lorapipe.sdxl.sgm_names import UnetNameMap

# Metadata key holding {"unet": {...}, "vae": {...}, "text_encoder": {...}, "text_encoder_2": {...}}.
CONFIG_METADATA_KEY = "lorapipe.diffusers_configs"

_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_TE2_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def vae_to_ldm(state: dict[str, Any], num_blocks: int) -> dict[str, Any]:
    """diffusers AutoencoderKL state dict -> LDM `first_stage_model.` layout."""
    out = {}
    for name, tensor in state.items():
        new = name
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda m: f"decoder.up.{num_blocks - 1 - int(m.group(1))}.block.",
            new,
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{num_blocks - 1 - int(m.group(1))}.upsample.",
            new,
        )
        new = new.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for src, dst in _VAE_ATTN.items():
                new = new.replace(f".attn_1.{src}.", f".attn_1.{dst}.")
            if tensor.ndim == 2:  # LDM keeps the attention projections as 1x1 convolutions
                tensor = tensor[:, :, None, None]
        new = new.replace("conv_norm_out", "norm_out")
        for src, dst in _VAE_RESNET.items():
            new = new.replace(f".{src}.", f".{dst}.")
        out[SGM_VAE_PREFIX + new] = tensor
    return out


def text_encoder_2_to_openclip(state: dict[str, Any]) -> dict[str, Any]:
    """HF CLIPTextModelWithProjection state dict -> OpenCLIP layout (fused q/k/v, transposed projection)."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[tuple[int, str], dict[str, Any]] = {}
    for name, tensor in state.items():
        if name == "text_projection.weight":
            out["text_projection"] = tensor.t().contiguous()
            continue
        if name == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = tensor
            continue
        if name == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = tensor
            continue
        if name.startswith("text_model.final_layer_norm."):
            out["ln_final." + name.rsplit(".", 1)[1]] = tensor
            continue
        match = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", name)
        if not match:
            continue  # position_ids buffers and the like are not stored by OpenCLIP
        layer, module, kind = int(match.group(1)), match.group(2), match.group(3)
        proj = re.match(r"self_attn\.([qkv])_proj$", module)
        if proj:
            qkv.setdefault((layer, kind), {})[proj.group(1)] = tensor
            continue
        out[f"transformer.resblocks.{layer}.{_TE2_LAYER[module]}.{kind}"] = tensor
    for (layer, kind), parts in qkv.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    out["logit_scale"] = torch.tensor(4.6052)  # OpenCLIP stores it; diffusers ignores it
    return {SGM_TE2_PREFIX + k: v for k, v in out.items()}


def pipeline_to_sgm_state(pipe) -> dict[str, Any]:
    """The whole pipeline's weights under their SGM single-file names."""
    unet_map = UnetNameMap(pipe.unet.config)
    state = {SGM_UNET_PREFIX + unet_map.to_sgm(k): v for k, v in pipe.unet.state_dict().items()}
    state |= vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels))
    state |= {
        SGM_TE1_PREFIX + _with_text_model_prefix(k): v
        for k, v in pipe.text_encoder.state_dict().items()
        if "position_ids" not in k
    }
    state |= text_encoder_2_to_openclip(
        {_with_text_model_prefix(k): v for k, v in pipe.text_encoder_2.state_dict().items()}
    )
    return state


def _with_text_model_prefix(name: str) -> str:
    """transformers 5 drops the `text_model.` level from CLIPTextModel's state dict; checkpoints keep it."""
    if name.startswith(("text_model.", "text_projection.")):
        return name
    return "text_model." + name


def write_single_file(pipe, path: Path) -> Path:
    """Save `pipe` as one SGM-layout `.safetensors`, atomically, with its diffusers configs in the metadata."""
    from safetensors.torch import save_file

    configs = {
        "unet": dict(pipe.unet.config),
        "vae": dict(pipe.vae.config),
        "text_encoder": pipe.text_encoder.config.to_dict(),
        "text_encoder_2": pipe.text_encoder_2.config.to_dict(),
    }
    state = {k: v.contiguous() for k, v in pipeline_to_sgm_state(pipe).items()}
    path = Path(path)
    with atomic_target(path) as tmp:
        save_file(state, str(tmp), metadata={CONFIG_METADATA_KEY: json.dumps(configs, default=str)})
    return path
