"""`TrainConfig`: one frozen attribute per sdxl_train_network.py option lorapipe trains with.

Attribute names are exactly the Kohya keys and defaults are sd-scripts' defaults, so a reader who knows Kohya's
options knows this class. Each field carries its value kind in `metadata["kind"]`; the loader validates TOML and
`--set` values against it. Dataset options (resolution, buckets, captions, ...) live in `dataset`, built by the
dataset layer from the same keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# Value kinds understood by `lorapipe.config.values.coerce`.
FLAG, INT, FLOAT, STR, PATH, STR_LIST, NUMBER, FLOAT_OR_LIST, DERIVED = (
    "flag",
    "int",
    "float",
    "str",
    "path",
    "str_list",
    "int_or_float",
    "float_or_list",
    "derived",
)


_Options = TypeVar("_Options")


def _opt(default: Any, kind: str, **extra: Any) -> Any:
    return field(default=default, metadata={"kind": kind, **extra})


def flag() -> Any:
    return _opt(False, FLAG)


def integer(default: int | None = None, minimum: int | None = None) -> Any:
    return _opt(default, INT, minimum=minimum)


def number(default: float | None = None, low: float | None = None, high: float | None = None) -> Any:
    return _opt(default, FLOAT, low=low, high=high)


def text(default: str | None = None) -> Any:
    return _opt(default, STR)


def path() -> Any:
    return _opt(None, PATH)


def strings() -> Any:
    return _opt((), STR_LIST)


@dataclass(frozen=True)
class NetworkOptions:
    """networks.lora's other `network_args`, parsed and validated (None = not given, sd-scripts' default).

    Block lists have one value per SDXL UNet block (23). The block lists are None unless `block_dims` is given, as
    sd-scripts reads block_alphas/conv_block_* only then. The LoRA+ ratios are the effective ones: the specific
    `loraplus_unet_lr_ratio` / `loraplus_text_encoder_lr_ratio`, else `loraplus_lr_ratio`.
    """

    rank_dropout: float | None = None
    module_dropout: float | None = None
    block_dims: tuple[int, ...] | None = None
    block_alphas: tuple[float, ...] | None = None
    conv_block_dims: tuple[int, ...] | None = None
    conv_block_alphas: tuple[float, ...] | None = None
    loraplus_unet_lr_ratio: float | None = None
    loraplus_text_encoder_lr_ratio: float | None = None


@dataclass(frozen=True)
class LycorisOptions:
    """`network_module = "lycoris.kohya"`'s network_args, parsed (`config/lycoris_args.py`) with LyCORIS's defaults.

    `algo` is LyCORIS's module name (locon, loha, lokr); `conv_dim`/`conv_alpha` None mean LyCORIS's default
    (network_dim / network_alpha); `factor` -1 lets LyCORIS factorise LoKr's matrices; `dora_wd` is DoRA's weight
    decomposition, for any algo.
    """

    algo: str = "locon"
    preset: str = "full"
    conv_dim: int | None = None
    conv_alpha: float | None = None
    dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    factor: int = -1
    use_tucker: bool = False
    use_scalar: bool = False
    decompose_both: bool = False
    dora_wd: bool = False
    wd_on_output: bool = True
    rank_dropout_scale: bool = False
    bypass_mode: bool = False
    full_matrix: bool = False
    unbalanced_factorization: bool = False
    rs_lora: bool = False
    loraplus_unet_lr_ratio: float | None = None
    loraplus_text_encoder_lr_ratio: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    """The effective training options (sd-scripts names and defaults) plus the dataset blueprint.

    Conventions kept from sd-scripts: `None` means "not given" wherever sd-scripts distinguishes it (e.g.
    `min_timestep`/`max_timestep` → 0/1000, `save_precision` → the training dtype, `output_name` → "last",
    `seed` → random, `network_alpha` 0 → alpha = dim). `lr_warmup_steps` is an int (steps) or a float (a fraction of
    all steps, as sd-scripts treats any float). `text_encoder_lr` is the single value `networks.lora` uses.
    Paths are resolved: relative paths are looked up beside the config file first.
    """

    # -- model and precision
    pretrained_model_name_or_path: str | None = text()
    vae: str | None = path()
    v_parameterization: bool = flag()
    mixed_precision: str = text("no")
    full_fp16: bool = flag()
    full_bf16: bool = flag()
    fp8_base: bool = flag()  # frozen U-Net and text encoders stored in float8_e4m3fn (train/fp8.py)
    fp8_base_unet: bool = flag()  # the U-Net only
    no_half_vae: bool = flag()
    clip_skip: int | None = integer(minimum=1)
    max_token_length: int | None = integer()
    gradient_checkpointing: bool = flag()
    torch_compile: bool = flag()
    dynamo_backend: str = text("inductor")  # lower-case backend name for torch.compile (sd-scripts' choices)
    # -- network (networks.lora, or lycoris.kohya with `lycoris` set)
    network_module: str = text("networks.lora")
    network_dim: int = integer(4, minimum=1)
    network_alpha: float = number(1.0, low=0)
    network_dropout: float | None = number(low=0, high=1)
    network_args: tuple[str, ...] = strings()
    conv_dim: int | None = _opt(None, DERIVED)  # from network_args "conv_dim=N"; None = no conv LoRA
    conv_alpha: float | None = _opt(None, DERIVED)  # from network_args "conv_alpha=A" (1 when only conv_dim is set)
    network_options: NetworkOptions = _opt(NetworkOptions(), DERIVED)  # the other network_args, parsed
    lycoris: LycorisOptions | None = _opt(None, DERIVED)  # network_module "lycoris.kohya": its network_args, parsed
    network_weights: str | None = path()
    dim_from_weights: bool = flag()  # take every module's rank and alpha from network_weights
    network_train_unet_only: bool = flag()
    network_train_text_encoder_only: bool = flag()
    training_comment: str | None = text()
    no_metadata: bool = flag()
    save_model_as: str = text("safetensors")
    # -- optimizer and schedule
    optimizer_type: str = text("AdamW")
    optimizer_args: tuple[str, ...] = strings()
    learning_rate: float = number(2e-6, low=0)
    unet_lr: float | None = number(low=0)
    text_encoder_lr: float | None = _opt(None, FLOAT_OR_LIST)
    max_grad_norm: float = number(1.0, low=0)
    lr_scheduler: str = text("constant")
    lr_warmup_steps: int | float = _opt(0, NUMBER)
    lr_decay_steps: int | float = _opt(0, NUMBER)
    lr_scheduler_num_cycles: int = integer(1, minimum=1)
    lr_scheduler_power: float = number(1.0)
    lr_scheduler_timescale: int | None = integer(minimum=1)
    lr_scheduler_min_lr_ratio: float | None = number(low=0, high=1)
    gradient_accumulation_steps: int = integer(1, minimum=1)
    # -- training length and seed
    max_train_steps: int = integer(1600, minimum=1)
    max_train_epochs: int | None = integer(minimum=1)
    seed: int | None = integer(minimum=0)
    # -- caching
    cache_latents: bool = flag()
    cache_latents_to_disk: bool = flag()
    cache_text_encoder_outputs: bool = flag()
    cache_text_encoder_outputs_to_disk: bool = flag()
    # -- noise, timesteps, loss
    noise_offset: float | None = number(low=0)
    noise_offset_random_strength: bool = flag()
    adaptive_noise_scale: float | None = number()
    multires_noise_iterations: int | None = integer(minimum=0)
    multires_noise_discount: float = number(0.3, low=0, high=1)
    ip_noise_gamma: float | None = number(low=0)
    ip_noise_gamma_random_strength: bool = flag()
    zero_terminal_snr: bool = flag()
    min_timestep: int | None = integer(minimum=0)
    max_timestep: int | None = integer(minimum=1)
    loss_type: str = text("l2")
    huber_schedule: str = text("snr")
    huber_c: float = number(0.1, low=0)
    huber_scale: float = number(1.0, low=0)
    min_snr_gamma: float | None = number(low=0)
    scale_weight_norms: float | None = number(low=0)  # max-norm regularisation of each LoRA module's update
    masked_loss: bool = flag()  # weight the loss by a mask; lorapipe's masks are the images' alpha (alpha_mask)
    debiased_estimation_loss: bool = flag()
    scale_v_pred_loss_like_noise_pred: bool = flag()
    v_pred_like_loss: float | None = number(low=0)
    # -- saving and resume
    output_dir: str | None = path()
    output_name: str | None = text()
    save_precision: str | None = text()
    save_every_n_epochs: int | None = integer(minimum=0)
    save_every_n_steps: int | None = integer(minimum=0)
    save_last_n_epochs: int | None = integer(minimum=0)
    save_last_n_steps: int | None = integer(minimum=0)
    save_last_n_epochs_state: int | None = integer(minimum=0)
    save_last_n_steps_state: int | None = integer(minimum=0)
    save_state: bool = flag()
    save_state_on_train_end: bool = flag()
    resume: str | None = path()
    # -- sample images
    sample_prompts: str | None = path()
    sample_every_n_steps: int | None = integer(minimum=0)
    # Validation loss on the images validation_split holds out (a dataset option): after every N steps, every
    # N epochs (default: each epoch when a split is set), over at most max_validation_steps batches.
    validate_every_n_steps: int | None = integer(minimum=1)
    validate_every_n_epochs: int | None = integer(minimum=1)
    max_validation_steps: int | None = integer(minimum=1)
    sample_every_n_epochs: int | None = integer(minimum=0)
    sample_at_first: bool = flag()
    sample_sampler: str = text("ddim")
    # -- logging
    logging_dir: str | None = path()
    log_with: str | None = text()
    log_prefix: str | None = text()
    # -- modelspec metadata
    metadata_title: str | None = text()
    metadata_author: str | None = text()
    metadata_description: str | None = text()
    metadata_license: str | None = text()
    metadata_tags: str | None = text()
    metadata_usage_hint: str | None = text()
    metadata_thumbnail: str | None = text()
    metadata_merged_from: str | None = text()
    metadata_trigger_phrase: str | None = text()
    metadata_preprocessor: str | None = text()
    metadata_is_negative_embedding: str | None = text()
    # -- not Kohya keys: where this config came from and what it trains on
    dataset: Any = field(default=None, metadata={"kind": None}, compare=False)  # DatasetBlueprint
    source: str = field(default="", metadata={"kind": None})
    dataset_dir: Path | None = field(default=None, metadata={"kind": None})

    @property
    def train_unet(self) -> bool:
        return not self.network_train_text_encoder_only

    @property
    def train_text_encoder(self) -> bool:
        return not self.network_train_unet_only

    def options(self, cls: type[_Options]) -> _Options:
        """The frozen option bundle `cls` (a trainer module's dataclass) filled from the keys of the same names; a key
        left unset (None) takes `cls`'s default, which is sd-scripts' "off"."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: Kohya keys with their effective values, then `dataset`, `source`, `dataset_dir`."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "dataset":
                value = _jsonable(value) if value is not None else None
            out[item.name] = _jsonable(value)
        return out


def kohya_fields() -> dict[str, dataclasses.Field]:
    """The TrainConfig fields that are Kohya option keys (not derived, not bookkeeping)."""
    return {
        item.name: item for item in dataclasses.fields(TrainConfig) if item.metadata.get("kind") not in (None, DERIVED)
    }


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: _jsonable(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and the warnings met on the way (ignored keys, fallbacks, sd-scripts notes)."""

    config: TrainConfig
    warnings: tuple[str, ...] = ()
