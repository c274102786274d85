"""The `ss_*` and `modelspec.*` metadata sd-scripts writes into an SDXL LoRA's safetensors header.

Values follow sd-scripts' conventions: Python `str()` of the value (`"None"`, `"True"`, `"0.0001"`), JSON for nested
data. No torch here: the trainer passes plain values. `sshs_*` hashes are added by `file.save_kohya_lora`.
"""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lorapipe.hashes import HashCache, legacy_hash_file

NETWORK_MODULE = "networks.lora"
BASE_MODEL_VERSION_SDXL = "sdxl_base_v1-0"
MODELSPEC_VERSION = "1.0.1"  # sd-scripts library/sai_model_spec.py (ModelSpec 1.0.1)
MODELSPEC_ARCHITECTURE_SDXL_LORA = "stable-diffusion-xl-v1-base/lora"
MODELSPEC_IMPLEMENTATION_SDXL = "https://github.com/Stability-AI/generative-models"
DEFAULT_SDXL_RESOLUTION = (1024, 1024)
UNKNOWN_COMMIT = "(unknown)"
# sd-scripts train_util.SS_METADATA_MINIMUM_KEYS: what `no_metadata` keeps.
MINIMUM_SS_KEYS = (
    "ss_v2",
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
)

# ss key -> Kohya config key, copied verbatim (str()) from the config. The trainer passes the whole TrainConfig, so
# the defaults are TrainConfig's (lorapipe/config/model.py); a key the caller leaves out is written as "None".
_FROM_CONFIG: dict[str, str] = {
    "ss_learning_rate": "learning_rate",
    "ss_unet_lr": "unet_lr",
    "ss_gradient_checkpointing": "gradient_checkpointing",
    "ss_gradient_accumulation_steps": "gradient_accumulation_steps",
    "ss_lr_warmup_steps": "lr_warmup_steps",
    "ss_lr_scheduler": "lr_scheduler",
    "ss_network_dropout": "network_dropout",
    "ss_mixed_precision": "mixed_precision",
    "ss_full_fp16": "full_fp16",
    "ss_clip_skip": "clip_skip",
    "ss_max_token_length": "max_token_length",
    "ss_cache_latents": "cache_latents",
    "ss_seed": "seed",
    "ss_lowram": "lowram",
    "ss_noise_offset": "noise_offset",
    "ss_multires_noise_iterations": "multires_noise_iterations",
    "ss_multires_noise_discount": "multires_noise_discount",
    "ss_adaptive_noise_scale": "adaptive_noise_scale",
    "ss_zero_terminal_snr": "zero_terminal_snr",
    "ss_noise_offset_random_strength": "noise_offset_random_strength",
    "ss_training_comment": "training_comment",
    "ss_max_grad_norm": "max_grad_norm",
    "ss_caption_dropout_rate": "caption_dropout_rate",
    "ss_caption_dropout_every_n_epochs": "caption_dropout_every_n_epochs",
    "ss_caption_tag_dropout_rate": "caption_tag_dropout_rate",
    "ss_face_crop_aug_range": "face_crop_aug_range",
    "ss_prior_loss_weight": "prior_loss_weight",
    "ss_min_snr_gamma": "min_snr_gamma",
    "ss_scale_weight_norms": "scale_weight_norms",
    "ss_masked_loss": "masked_loss",
    "ss_validation_seed": "validation_seed",
    "ss_validation_split": "validation_split",
    "ss_max_validation_steps": "max_validation_steps",
    "ss_validate_every_n_epochs": "validate_every_n_epochs",
    "ss_validate_every_n_steps": "validate_every_n_steps",
    "ss_ip_noise_gamma": "ip_noise_gamma",
    "ss_ip_noise_gamma_random_strength": "ip_noise_gamma_random_strength",
    "ss_debiased_estimation": "debiased_estimation_loss",
    "ss_loss_type": "loss_type",
    "ss_huber_schedule": "huber_schedule",
    "ss_huber_scale": "huber_scale",
    "ss_huber_c": "huber_c",
    "ss_fp8_base": "fp8_base",
    "ss_fp8_base_unet": "fp8_base_unet",
    "ss_resize_interpolation": "resize_interpolation",
}
# Keys sd-scripts records that TrainConfig does not carry (lorapipe ignores them or reads them per subset): written
# with the value the run effectively had.
_NOT_IN_TRAIN_CONFIG: dict[str, Any] = {
    "lowram": False,
    "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0,
    "caption_tag_dropout_rate": 0.0,
    "face_crop_aug_range": None,
    "fp8_base": False,
    "fp8_base_unet": False,
    "resize_interpolation": None,
}
# modelspec field -> Kohya `metadata_*` config key (written when set).
_MODELSPEC_FROM_CONFIG = {
    "author": "metadata_author",
    "description": "metadata_description",
    "license": "metadata_license",
    "tags": "metadata_tags",
    "usage_hint": "metadata_usage_hint",
    "merged_from": "metadata_merged_from",
    "trigger_phrase": "metadata_trigger_phrase",
    "preprocessor": "metadata_preprocessor",
    "is_negative_embedding": "metadata_is_negative_embedding",
}


@dataclass(frozen=True)
class DatasetSummary:
    """What the metadata says about the training data (counts include repeats, as sd-scripts counts)."""

    num_train_images: int
    num_batches_per_epoch: int
    num_reg_images: int = 0
    num_validation_images: int = 0
    batch_size_per_device: int = 1
    total_batch_size: int = 1
    resolution: tuple[int, int] | None = None
    enable_bucket: bool = False
    bucket_no_upscale: bool = False
    min_bucket_reso: int | None = None
    max_bucket_reso: int | None = None
    color_aug: bool = False
    flip_aug: bool = False
    random_crop: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = 0
    dataset_dirs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # folder -> n_repeats, img_count
    reg_dataset_dirs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    tag_frequency: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # folder -> tag -> count
    bucket_info: Mapping[str, Any] | None = None
    datasets: tuple[Mapping[str, Any], ...] = ()  # set in --dataset_config mode: one dict per dataset

    @classmethod
    def coerce(cls, value: DatasetSummary | Mapping[str, Any]) -> DatasetSummary:
        if isinstance(value, DatasetSummary):
            return value
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


def new_session_id() -> int:
    """sd-scripts' `ss_session_id`: a random integer shared by all files of one run."""
    return random.SystemRandom().randint(0, 2**32)


def build_kohya_metadata(
    *,
    config_dict: Mapping[str, Any],
    dataset_summary: DatasetSummary | Mapping[str, Any],
    base_model_name: str,
    training_started_at: float,
    steps: int,
    epoch: int,
    network_dim: int | None,
    network_alpha: float | None,
    network_args: Mapping[str, Any] | None = None,
    network_module: str = NETWORK_MODULE,
    session_id: int | None = None,
    training_finished_at: float | None = None,
    output_name: str | None = None,
    num_epochs: int | None = None,
    max_train_steps: int | None = None,
    text_encoder_lr: Any = None,
    optimizer: str | None = None,
    base_model_hashes: tuple[str, str] | None = None,
    implementation_version: str | None = None,
    no_metadata: bool = False,
) -> dict[str, str]:
    """The header metadata of one save, as sd-scripts' `train_network.py` writes it for SDXL.

    `config_dict` is the Kohya training config (flat keys); explicit arguments override what it says.
    `base_model_hashes` is (legacy 8-hex, sha256) of a local base model file (see `base_model_file_hashes`).
    """
    cfg = dict(config_dict)
    data = DatasetSummary.coerce(dataset_summary)
    finished = training_finished_at if training_finished_at is not None else datetime.datetime.now().timestamp()
    name = output_name or cfg.get("output_name") or "last"
    te_lr = text_encoder_lr if text_encoder_lr is not None else cfg.get("text_encoder_lr")
    meta: dict[str, Any] = {
        "ss_session_id": session_id if session_id is not None else new_session_id(),
        "ss_training_started_at": training_started_at,
        "ss_training_finished_at": finished,
        "ss_output_name": name,
        "ss_text_encoder_lr": _scalar_if_single(te_lr),
        "ss_num_train_images": data.num_train_images,
        "ss_num_validation_images": data.num_validation_images,
        "ss_num_reg_images": data.num_reg_images,
        "ss_num_batches_per_epoch": data.num_batches_per_epoch,
        "ss_num_epochs": num_epochs if num_epochs is not None else cfg.get("max_train_epochs"),
        "ss_max_train_steps": max_train_steps if max_train_steps is not None else cfg.get("max_train_steps"),
        "ss_steps": steps,
        "ss_epoch": epoch,
        "ss_network_module": network_module,
        "ss_network_dim": network_dim,
        "ss_network_alpha": network_alpha,
        "ss_v2": False,
        "ss_base_model_version": BASE_MODEL_VERSION_SDXL,
        "ss_sd_scripts_commit_hash": UNKNOWN_COMMIT,
        "ss_optimizer": optimizer or _optimizer_text(cfg),
        "ss_sd_model_name": _model_display_name(base_model_name),
    }
    for key, cfg_key in _FROM_CONFIG.items():
        meta[key] = cfg.get(cfg_key, _NOT_IN_TRAIN_CONFIG.get(cfg_key))
    if network_args:
        meta["ss_network_args"] = json.dumps({k: str(v) for k, v in network_args.items()})
    if base_model_hashes:
        meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"] = base_model_hashes
    meta.update(_dataset_keys(data))
    ss = {k: _kohya_str(v) for k, v in meta.items()}
    if no_metadata:
        ss = {k: v for k, v in ss.items() if k in MINIMUM_SS_KEYS}
    return ss | modelspec_metadata(
        cfg, title=cfg.get("metadata_title") or name, saved_at=finished, implementation_version=implementation_version
    )


def modelspec_metadata(
    cfg: Mapping[str, Any], *, title: str, saved_at: float, implementation_version: str | None = None
) -> dict[str, str]:
    """Stability AI ModelSpec keys for an SDXL LoRA (sd-scripts `sai_model_spec.build_metadata`)."""
    spec = {
        "sai_model_spec": MODELSPEC_VERSION,
        "architecture": MODELSPEC_ARCHITECTURE_SDXL_LORA,
        "implementation": MODELSPEC_IMPLEMENTATION_SDXL,
        "title": title,
        "resolution": "{}x{}".format(*(_resolution(cfg.get("resolution")) or DEFAULT_SDXL_RESOLUTION)),
        "date": datetime.datetime.fromtimestamp(saved_at).replace(microsecond=0).isoformat(),
        "prediction_type": "v" if cfg.get("v_parameterization") else "epsilon",
        "implementation_version": implementation_version or _our_version(),
    }
    if cfg.get("min_timestep") is not None or cfg.get("max_timestep") is not None:
        spec["timestep_range"] = f"{cfg.get('min_timestep') or 0},{cfg.get('max_timestep') or 1000}"
    if cfg.get("clip_skip") is not None:
        spec["encoder_layer"] = str(cfg["clip_skip"])
    for spec_key, cfg_key in _MODELSPEC_FROM_CONFIG.items():
        if cfg.get(cfg_key) not in (None, ""):
            spec[spec_key] = str(cfg[cfg_key])
    return {f"modelspec.{k}": v for k, v in spec.items()}


def base_model_file_hashes(path: Path, hash_cache: HashCache | None = None) -> tuple[str, str]:
    """(ss_sd_model_hash, ss_new_sd_model_hash): A1111's legacy hash (sha256 of 64 KiB at 1 MiB, 8 hex) and the
    sha256 of the whole file, which is read only when `hash_cache` (default: the user's) has no current value."""
    return legacy_hash_file(path), (hash_cache or HashCache()).sha256(path)


def _dataset_keys(data: DatasetSummary) -> dict[str, Any]:
    keys: dict[str, Any] = {
        "ss_tag_frequency": json.dumps(_plain(data.tag_frequency)),
        "ss_dataset_dirs": json.dumps(_plain(data.dataset_dirs)),
    }
    if data.datasets:  # --dataset_config mode
        keys["ss_datasets"] = json.dumps([_plain(d) for d in data.datasets])
        return keys
    resolution = data.resolution
    keys |= {
        "ss_batch_size_per_device": data.batch_size_per_device,
        "ss_total_batch_size": data.total_batch_size,
        "ss_resolution": tuple(resolution) if resolution else None,
        "ss_color_aug": data.color_aug,
        "ss_flip_aug": data.flip_aug,
        "ss_random_crop": data.random_crop,
        "ss_shuffle_caption": data.shuffle_caption,
        "ss_enable_bucket": data.enable_bucket,
        "ss_bucket_no_upscale": data.bucket_no_upscale,
        "ss_min_bucket_reso": data.min_bucket_reso,
        "ss_max_bucket_reso": data.max_bucket_reso,
        "ss_keep_tokens": data.keep_tokens,
        "ss_reg_dataset_dirs": json.dumps(_plain(data.reg_dataset_dirs)),
    }
    if data.bucket_info is not None:
        keys["ss_bucket_info"] = json.dumps(_plain(data.bucket_info))
    return keys


def _kohya_str(value: Any) -> str:
    """sd-scripts stores `str(value)`; strings pass through unchanged."""
    return value if isinstance(value, str) else str(value)


def _scalar_if_single(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    return value


def _optimizer_text(cfg: Mapping[str, Any]) -> str:
    """`AdamW(weight_decay=0.01)`-style text from optimizer_type/optimizer_args when the trainer gives none."""
    args = cfg.get("optimizer_args") or []
    if isinstance(args, str):
        args = args.split()
    name = cfg.get("optimizer_type") or "AdamW"
    return f"{name}({','.join(str(a) for a in args)})" if args else str(name)


def _model_display_name(name: str) -> str:
    """sd-scripts: the basename when the model is a local path, else the id as given."""
    path = Path(name)
    return path.name if path.exists() else name


def _resolution(value: Any) -> tuple[int, int] | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return int(value), int(value)
    if isinstance(value, (list, tuple)):
        parts = [int(v) for v in value]
    else:
        parts = [int(v) for v in str(value).replace("x", ",").split(",") if v.strip()]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _plain(value: Any) -> Any:
    """Mappings/tuples -> JSON-ready dicts/lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _our_version() -> str:
    from lorapipe import __version__

    return f"lorapipe/{__version__}"
