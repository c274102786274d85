"""Writing LoRA files with Kohya metadata (through `lorapipe.lora.file` / `lorapipe.lora.metadata`) and pruning
old ones on sd-scripts' cadence."""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorapipe.config.network_args import split_pairs
from lorapipe.lora.file import save_kohya_lora
from lorapipe.lora.metadata import base_model_file_hashes, build_kohya_metadata

_SAVE_DTYPES = {None: None, "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def reproducible_time() -> float | None:
    """SOURCE_DATE_EPOCH (reproducible-builds convention) pins timestamps, so same seed -> same file bytes."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return float(value) if value and value.isdigit() else None


@dataclass
class LoraWriter:
    """Saves the network as `<output_dir>/<name>.safetensors` with metadata describing the run so far."""

    plan: object
    network: object
    optimizer_text: str
    started_at: float = field(default_factory=lambda: reproducible_time() or time.time())
    session_id: int | None = None
    # (ss_sd_model_hash, ss_new_sd_model_hash) of a single-file base model, read at the first save (not at
    # start-up); the hash cache makes every later run of the same file a stat.
    _base_model_hashes: tuple[str, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.session_id is None:
            pinned = reproducible_time() is not None
            self.session_id = (
                int(hashlib.sha256(str(self.plan.seed).encode()).hexdigest()[:8], 16)
                if pinned
                else int.from_bytes(os.urandom(4), "little")
            )

    def save(self, name: str, *, steps: int, epoch: int) -> Path:
        cfg = self.plan.config
        path = Path(self.plan.output_dir) / f"{name}.safetensors"
        tensors = self.network.kohya_state_dict(_SAVE_DTYPES[cfg.save_precision])
        return save_kohya_lora(path, tensors, self.metadata(steps=steps, epoch=epoch))

    def metadata(self, *, steps: int, epoch: int) -> dict[str, str]:
        cfg, plan = self.plan.config, self.plan
        config_dict = {k: v for k, v in cfg.to_dict().items() if k not in ("dataset", "source", "dataset_dir")}
        config_dict.update(_dataset_config_keys(plan.blueprint))
        # sd-scripts records every network_args entry; conv_alpha's default is spelled out as it does.
        network_args: dict[str, object] = dict(split_pairs(cfg.network_args))
        if cfg.conv_dim:
            network_args |= {"conv_dim": cfg.conv_dim, "conv_alpha": cfg.conv_alpha if cfg.conv_alpha else 1}
        return build_kohya_metadata(
            config_dict=config_dict,
            dataset_summary=dataset_summary(plan),
            base_model_name=plan.base_model,
            training_started_at=self.started_at,
            steps=steps,
            epoch=epoch,
            network_dim=cfg.network_dim,
            network_alpha=cfg.network_alpha,
            network_args=network_args or None,
            network_module=cfg.network_module,
            session_id=self.session_id,
            training_finished_at=reproducible_time() or time.time(),
            output_name=plan.output_name,
            num_epochs=plan.epochs,
            max_train_steps=plan.total_steps,
            text_encoder_lr=cfg.text_encoder_lr,
            optimizer=self.optimizer_text,
            base_model_hashes=self._base_hashes(),
            no_metadata=cfg.no_metadata,
        )

    def _base_hashes(self) -> tuple[str, str] | None:
        """sd-scripts writes both hashes when the base model is a local file (a folder or hub id gets neither)."""
        path = Path(self.plan.base_model)
        if self._base_model_hashes is None and path.is_file():
            self._base_model_hashes = base_model_file_hashes(path)
        return self._base_model_hashes


def _dataset_config_keys(blueprint) -> dict:
    return {
        "resolution": list(blueprint.resolution),
        "prior_loss_weight": blueprint.prior_loss_weight,
        "max_token_length": blueprint.max_token_length,
        "validation_split": blueprint.validation_split,
        "validation_seed": blueprint.validation_seed,
    }


def dataset_summary(plan) -> dict:
    """Counts with repeats, dirs, tag frequency and buckets in the shape `build_kohya_metadata` takes."""
    blueprint, items = plan.blueprint, plan.scan.items
    train = [i for i in items if not i.subset.is_reg]
    reg = [i for i in items if i.subset.is_reg]
    dirs: dict[str, dict[str, int]] = {}
    reg_dirs: dict[str, dict[str, int]] = {}
    tags: dict[str, Counter] = {}
    for item in items:
        folder = item.subset.image_dir.name
        target = reg_dirs if item.subset.is_reg else dirs
        entry = target.setdefault(folder, {"n_repeats": item.subset.num_repeats, "img_count": 0})
        entry["img_count"] += 1
        counter = tags.setdefault(folder, Counter())
        for tag in (item.caption or "").split(","):
            if tag.strip():
                counter[tag.strip().lower()] += 1
    buckets = Counter()
    for item in items:
        buckets[item.bucket] += item.repeats
    ordered = enumerate(sorted(buckets.items()))
    bucket_info = {
        "buckets": {i: {"resolution": list(b), "count": n} for i, (b, n) in ordered},
        "mean_img_ar_error": 0.0,
    }
    subsets = blueprint.subsets
    return {
        "num_train_images": sum(i.repeats for i in train),
        "num_reg_images": sum(i.repeats for i in reg),
        "num_validation_images": len(plan.scan.validation_items),
        "num_batches_per_epoch": plan.batches_per_epoch,
        "batch_size_per_device": blueprint.batch_size,
        "total_batch_size": blueprint.batch_size * plan.processes.world * plan.config.gradient_accumulation_steps,
        "resolution": tuple(blueprint.resolution),
        "enable_bucket": blueprint.enable_bucket,
        "bucket_no_upscale": blueprint.bucket_no_upscale,
        "min_bucket_reso": blueprint.min_bucket_reso,
        "max_bucket_reso": blueprint.max_bucket_reso,
        "color_aug": any(s.color_aug for s in subsets),
        "flip_aug": any(s.flip_aug for s in subsets),
        "random_crop": any(s.random_crop for s in subsets),
        "shuffle_caption": any(s.shuffle_caption for s in subsets),
        "keep_tokens": max((s.keep_tokens for s in subsets), default=0),
        "dataset_dirs": dirs,
        "reg_dataset_dirs": reg_dirs,
        "tag_frequency": {k: dict(v) for k, v in tags.items()},
        "bucket_info": bucket_info,
        "datasets": _datasets_metadata(blueprint, items, tags) if blueprint.from_dataset_config else (),
    }


def _datasets_metadata(blueprint, items, tags) -> tuple[dict, ...]:
    """sd-scripts' `ss_datasets` (dataset_config mode): one entry per [[datasets]] table with its subsets."""
    out = []
    for index, table in enumerate(blueprint.datasets()):
        mine = [i for i in items if i.subset.dataset_index == index]
        buckets = Counter()
        for item in mine:
            buckets[item.bucket] += item.repeats
        subsets = []
        for subset in table.subsets:
            count = sum(1 for i in mine if i.subset == subset)
            subsets.append(
                {
                    "img_count": count,
                    "num_repeats": subset.num_repeats,
                    "color_aug": subset.color_aug,
                    "flip_aug": subset.flip_aug,
                    "random_crop": subset.random_crop,
                    "shuffle_caption": subset.shuffle_caption,
                    "keep_tokens": subset.keep_tokens,
                    "keep_tokens_separator": subset.keep_tokens_separator,
                    "secondary_separator": subset.secondary_separator,
                    "enable_wildcard": subset.enable_wildcard,
                    "caption_prefix": subset.caption_prefix,
                    "caption_suffix": subset.caption_suffix,
                    "resize_interpolation": subset.resize_interpolation,
                    "image_dir": subset.image_dir.name,
                    "class_tokens": subset.class_tokens,
                    "is_reg": subset.is_reg,
                }
            )
        out.append(
            {
                "is_dreambooth": True,
                "batch_size_per_device": table.batch_size,
                "num_train_images": sum(i.repeats for i in mine if not i.subset.is_reg),
                "num_reg_images": sum(i.repeats for i in mine if i.subset.is_reg),
                "resolution": list(table.resolution),
                "enable_bucket": table.enable_bucket,
                "min_bucket_reso": table.min_bucket_reso,
                "max_bucket_reso": table.max_bucket_reso,
                "tag_frequency": {s.image_dir.name: dict(tags.get(s.image_dir.name, {})) for s in table.subsets},
                "bucket_info": {
                    "buckets": {
                        i: {"resolution": list(b), "count": n} for i, (b, n) in enumerate(sorted(buckets.items()))
                    },
                    "mean_img_ar_error": 0.0,
                },
                "resize_interpolation": None,
                "subsets": subsets,
            }
        )
    return tuple(out)
