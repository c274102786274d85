"""Frozen description of a dataset as sd-scripts would build it: subsets plus bucket and caption options.

A `DatasetBlueprint` is the only thing the scanner, the batcher, `dataset check` and the trainer need; the layer
helpers here turn Kohya keys into its fields. `dataset/build.py` builds one from a training config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lorapipe.dataset import options as opt
from lorapipe.dataset.problems import Problem, warning
from lorapipe.errors import ConfigError
from lorapipe.sdxl.constants import ALLOWED_MAX_TOKEN_LENGTHS

# SDXL's VAE (8x) and UNet (4x more) need bucket sides divisible by 32 (sd-scripts: verify_bucket_reso_steps(32)).
SDXL_BUCKET_STEP_MULTIPLE = 32

# Flat Kohya training-TOML keys this layer consumes; the config layer hands exactly these to blueprint_from_args.
DATASET_KEYS = frozenset(
    {
        "train_data_dir",
        "reg_data_dir",
        "dataset_config",
        "resolution",
        "enable_bucket",
        "min_bucket_reso",
        "max_bucket_reso",
        "bucket_reso_steps",
        "bucket_no_upscale",
        "train_batch_size",
        "prior_loss_weight",
        "max_token_length",
        "caption_extension",
        "caption_extention",
        "dataset_repeats",
        "resize_interpolation",
        "validation_split",
        "validation_seed",
    }
    | (set(opt.SUBSET_DEFAULTS) - {"num_repeats", "class_tokens", "custom_attributes"})
)


@dataclass(frozen=True)
class SubsetSpec:
    """One folder of images with its caption and augmentation options (sd-scripts' DreamBoothSubset)."""

    image_dir: Path
    num_repeats: int = 1
    class_tokens: str | None = None
    is_reg: bool = False
    caption_extension: str = ".caption"
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    enable_wildcard: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    random_crop: bool = False
    flip_aug: bool = False
    color_aug: bool = False
    resize_interpolation: str | None = None
    alpha_mask: bool = False  # the image's alpha channel weights the loss (transparent = not learned)
    token_warmup_min: int = 1  # tags used at step 0 when token_warmup_step is set
    token_warmup_step: float = 0.0  # step (or fraction of all steps when < 1) by which every tag is used
    dataset_index: int = 0  # which [[datasets]] table of a dataset_config it belongs to

    @property
    def name(self) -> str:
        return self.image_dir.name


@dataclass(frozen=True)
class DatasetBlueprint:
    """Dataset-wide options (sd-scripts defaults) and the subsets; `notes` are warnings found while building it.

    A dataset_config with several [[datasets]] tables (each with its own resolution, buckets and batch size, as
    sd-scripts' DatasetGroup) is one blueprint whose options are the first table's, whose `subsets` are all of
    them, and whose `more_datasets` hold the other tables; `datasets()` gives one blueprint per table."""

    resolution: tuple[int, int]
    subsets: tuple[SubsetSpec, ...]
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    batch_size: int = 1
    max_token_length: int = 75
    prior_loss_weight: float = 1.0
    network_multiplier: float = 1.0
    validation_split: float = 0.0  # fraction of each training subset's images held out for validation loss
    validation_seed: int | None = None  # shuffle seed of the split (None: the training seed)
    source: str = ""
    notes: tuple[Problem, ...] = ()
    more_datasets: tuple[DatasetBlueprint, ...] = ()  # the 2nd, 3rd, ... [[datasets]] tables
    from_dataset_config: bool = False  # built from a dataset_config TOML (sd-scripts then writes ss_datasets)

    def datasets(self) -> tuple[DatasetBlueprint, ...]:
        """One single-table blueprint per [[datasets]] table (just this one for a plain dataset)."""
        if not self.more_datasets:
            return (self,)
        first = replace(
            self, subsets=tuple(s for s in self.subsets if s.dataset_index == 0), more_datasets=(), notes=()
        )
        return (first, *self.more_datasets)

    def batch_size_of(self, dataset_index: int) -> int:
        return self.datasets()[dataset_index].batch_size if self.more_datasets else self.batch_size

    @property
    def train_subsets(self) -> tuple[SubsetSpec, ...]:
        return tuple(s for s in self.subsets if not s.is_reg)

    @property
    def reg_subsets(self) -> tuple[SubsetSpec, ...]:
        return tuple(s for s in self.subsets if s.is_reg)


def subset_from_layers(
    image_dir: Path, layers: tuple[Mapping[str, Any], ...], source: str, *, is_reg: bool
) -> tuple[SubsetSpec, list[Problem]]:
    """Build a SubsetSpec from option layers (most specific first), validating every value."""
    get = lambda key: opt.lookup(key, layers, opt.SUBSET_DEFAULTS[key])  # noqa: E731
    notes: list[Problem] = []
    if get("face_crop_aug_range") is not None:
        notes.append(warning(image_dir, "face_crop_aug_range is not supported by lorapipe and is ignored"))
    interpolation = get("resize_interpolation")
    if interpolation is not None and interpolation not in opt.RESIZE_INTERPOLATIONS:
        raise ConfigError(f"{source}: resize_interpolation = {interpolation!r}; use one of {opt.RESIZE_INTERPOLATIONS}")
    class_tokens = get("class_tokens")
    spec = SubsetSpec(
        image_dir=image_dir,
        num_repeats=opt.as_int(get("num_repeats"), "num_repeats", source, minimum=1),
        class_tokens=None if class_tokens is None else opt.as_str(class_tokens, "class_tokens", source),
        is_reg=is_reg,
        caption_extension=opt.caption_extension(get("caption_extension"), source),
        shuffle_caption=opt.as_bool(get("shuffle_caption"), "shuffle_caption", source),
        caption_separator=opt.as_str(get("caption_separator"), "caption_separator", source) or ",",
        keep_tokens=opt.as_int(get("keep_tokens"), "keep_tokens", source, minimum=0),
        keep_tokens_separator=opt.as_str(get("keep_tokens_separator"), "keep_tokens_separator", source),
        secondary_separator=get("secondary_separator"),
        enable_wildcard=opt.as_bool(get("enable_wildcard"), "enable_wildcard", source),
        caption_prefix=get("caption_prefix"),
        caption_suffix=get("caption_suffix"),
        caption_dropout_rate=opt.as_float(get("caption_dropout_rate"), "caption_dropout_rate", source, low=0, high=1),
        caption_dropout_every_n_epochs=opt.as_int(
            get("caption_dropout_every_n_epochs"), "caption_dropout_every_n_epochs", source, minimum=0
        ),
        caption_tag_dropout_rate=opt.as_float(
            get("caption_tag_dropout_rate"), "caption_tag_dropout_rate", source, low=0, high=1
        ),
        random_crop=opt.as_bool(get("random_crop"), "random_crop", source),
        flip_aug=opt.as_bool(get("flip_aug"), "flip_aug", source),
        color_aug=opt.as_bool(get("color_aug"), "color_aug", source),
        resize_interpolation=interpolation,
        alpha_mask=opt.as_bool(get("alpha_mask"), "alpha_mask", source),
        token_warmup_min=opt.as_int(get("token_warmup_min"), "token_warmup_min", source, minimum=0),
        token_warmup_step=opt.as_float(get("token_warmup_step") or 0, "token_warmup_step", source, low=0),
    )
    return spec, notes


def dataset_params(layers: tuple[Mapping[str, Any], ...], source: str) -> tuple[dict[str, Any], list[Problem]]:
    """Validated dataset-wide values, with sd-scripts' rounding of min/max bucket sizes to the step."""
    get = lambda key: opt.lookup(key, layers, opt.DATASET_DEFAULTS[key])  # noqa: E731
    notes: list[Problem] = []
    if get("resolution") is None:
        raise ConfigError(f'{source}: resolution is missing; set e.g. resolution = "1024,1024"')
    resolution = opt.as_resolution(get("resolution"), "resolution", source)
    enable_bucket = opt.as_bool(get("enable_bucket"), "enable_bucket", source)
    steps = opt.as_int(get("bucket_reso_steps"), "bucket_reso_steps", source, minimum=1)
    if steps % SDXL_BUCKET_STEP_MULTIPLE:
        # sd-scripts stops here; a kohya_ss GUI preset ships bucket_reso_steps = 1, so round up and say so.
        rounded = steps + SDXL_BUCKET_STEP_MULTIPLE - steps % SDXL_BUCKET_STEP_MULTIPLE
        notes.append(
            warning(
                source,
                f"bucket_reso_steps = {steps} is not a multiple of {SDXL_BUCKET_STEP_MULTIPLE}, "
                f"which SDXL's VAE and UNet need (sd-scripts refuses it); using {rounded}",
            )
        )
        steps = rounded
    min_reso = opt.as_int(get("min_bucket_reso"), "min_bucket_reso", source, minimum=1)
    max_reso = opt.as_int(get("max_bucket_reso"), "max_bucket_reso", source, minimum=1)
    no_upscale = opt.as_bool(get("bucket_no_upscale"), "bucket_no_upscale", source)
    if enable_bucket:
        if min_reso % steps:
            notes.append(warning(source, f"min_bucket_reso {min_reso} rounded down to {min_reso - min_reso % steps}"))
            min_reso -= min_reso % steps
        if max_reso % steps:
            rounded = max_reso + steps - max_reso % steps
            notes.append(warning(source, f"max_bucket_reso {max_reso} rounded up to {rounded}"))
            max_reso = rounded
        if not no_upscale and min(resolution) < min_reso:
            raise ConfigError(f"{source}: min_bucket_reso {min_reso} is above the resolution {resolution}; lower it")
        if not no_upscale and max(resolution) > max_reso:
            raise ConfigError(f"{source}: max_bucket_reso {max_reso} is below the resolution {resolution}; raise it")
    split = opt.as_float(get("validation_split") or 0.0, "validation_split", source, low=0)
    if split >= 1:
        raise ConfigError(f"{source}: validation_split = {split}; use a fraction below 1 (e.g. 0.1)")
    seed = get("validation_seed")
    params = {
        "resolution": resolution,
        "enable_bucket": enable_bucket,
        "min_bucket_reso": min_reso,
        "max_bucket_reso": max_reso,
        "bucket_reso_steps": steps,
        "bucket_no_upscale": no_upscale,
        "batch_size": opt.as_int(get("batch_size"), "batch_size", source, minimum=1),
        "network_multiplier": opt.as_float(get("network_multiplier"), "network_multiplier", source),
        "validation_split": split,
        "validation_seed": None if seed is None else opt.as_int(seed, "validation_seed", source),
    }
    return params, notes


def run_params(args: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Options that only come from the flat training args (never from the dataset TOML)."""
    max_tokens = args.get("max_token_length")
    max_tokens = 75 if max_tokens is None else opt.as_int(max_tokens, "max_token_length", source)
    if max_tokens not in ALLOWED_MAX_TOKEN_LENGTHS:
        raise ConfigError(f"{source}: max_token_length = {max_tokens} must be 75, 150 or 225")
    prior = args.get("prior_loss_weight")
    return {
        "max_token_length": max_tokens,
        "prior_loss_weight": 1.0 if prior is None else opt.as_float(prior, "prior_loss_weight", source, low=0),
    }


def flat_layer(args: Mapping[str, Any]) -> dict[str, Any]:
    """The flat args under dataset-TOML names (train_batch_size -> batch_size, dataset_repeats -> num_repeats)."""
    layer = dict(args)
    layer.setdefault("batch_size", args.get("train_batch_size"))
    layer.setdefault("num_repeats", args.get("dataset_repeats"))
    if layer.get("caption_extension") is None:
        layer["caption_extension"] = args.get("caption_extention")  # sd-scripts' legacy spelling
    layer.pop("class_tokens", None)
    return layer
