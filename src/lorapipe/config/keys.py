"""The key table: every key a Kohya training TOML may hold, and what lorapipe does with it.

Statuses:
- `supported`: a `TrainConfig` attribute of the same name (validated, used by the trainer);
- `dataset`: consumed by the dataset layer (`lorapipe.dataset.blueprint.DATASET_KEYS`) into `TrainConfig.dataset`;
- `mapped`: an alias (legacy sd-scripts flag or kohya_ss GUI name) translated into a supported key, with a warning;
- `ignored`: accepted with a warning naming it (GUI-only keys always; sd-scripts options only when set to something
  other than off), because it does not change the trained LoRA or lorapipe does it its own way;
- `rejected`: fine while off (false/0/""/[]), an error naming key and file when set, because lorapipe does not
  implement it and training without it would not be the run the user asked for.
Any key not in the table is an error (sd-scripts would silently ignore it; a typo then costs a whole GPU run).
"""

from __future__ import annotations

from dataclasses import dataclass

from lorapipe.config.gui import GUI_NETWORK_FIELDS, LORA_MODULE, LORA_TYPES, LYCORIS_MODULE, RENAMED_FIELDS
from lorapipe.config.model import kohya_fields
from lorapipe.dataset.blueprint import DATASET_KEYS

SUPPORTED, DATASET, MAPPED, IGNORED, REJECTED = "supported", "dataset", "mapped", "ignored", "rejected"


@dataclass(frozen=True)
class KeySpec:
    """One key: its status, why, and (for `mapped`) the key it becomes. `gui` marks kohya_ss GUI-only keys."""

    name: str
    status: str
    reason: str = ""
    maps_to: str | None = None
    gui: bool = False


# Names sd-scripts accepts (compared case-insensitively, as train_util.get_optimizer does) -> canonical spelling.
OPTIMIZERS = {
    name.lower(): name
    for name in (
        "AdamW",
        "AdamW8bit",
        "PagedAdamW",
        "PagedAdamW8bit",
        "PagedAdamW32bit",
        "Lion",
        "Lion8bit",
        "PagedLion8bit",
        "SGDNesterov",
        "SGDNesterov8bit",
        "DAdaptation",
        "DAdaptAdaGrad",
        "DAdaptAdam",
        "DAdaptAdan",
        "DAdaptAdanIP",
        "DAdaptAdamPreprint",
        "DAdaptLion",
        "DAdaptSGD",
        "Prodigy",
        "Adafactor",
    )
}
# sd-scripts knows these too, but lorapipe's trainer cannot build them.
OPTIMIZERS_UNAVAILABLE = ("RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
    "piecewise_constant",
    "adafactor",
)
# sd-scripts' sampler names -> (diffusers scheduler class, extra scheduler config), as its get_my_scheduler maps
# them. `ddpm` is accepted only in a prompt line (`--ss ddpm`): sd-scripts' `--sample_sampler` choices leave it out.
SAMPLE_SCHEDULERS: dict[str, tuple[str, dict]] = {
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
SAMPLE_SAMPLERS = tuple(name for name in SAMPLE_SCHEDULERS if name != "ddpm")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("float", "fp16", "bf16")
LOSS_TYPES = ("l1", "l2", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
LOG_WITH = ("tensorboard", "wandb")
NETWORK_MODULES = (LORA_MODULE, LYCORIS_MODULE)
# networks.lora's network_args: those lorapipe honours (`network_args.py` parses them; `dropout` is read only to
# warn that networks.lora ignores it), and those it refuses (block-wise LR weights, which also change which modules
# train, are not implemented).
NETWORK_ARGS_SUPPORTED = (
    "conv_dim",
    "conv_alpha",
    "dropout",
    "rank_dropout",
    "module_dropout",
    "block_dims",
    "block_alphas",
    "conv_block_dims",
    "conv_block_alphas",
    "loraplus_lr_ratio",
    "loraplus_unet_lr_ratio",
    "loraplus_text_encoder_lr_ratio",
)
NETWORK_ARGS_REJECTED = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")
# torch.compile backends sd-scripts' --dynamo_backend offers; "no" is what the kohya_ss GUI writes for "off".
DYNAMO_BACKENDS = (
    "eager",
    "aot_eager",
    "inductor",
    "aot_ts_nvfuser",
    "nvprims_nvfuser",
    "cudagraphs",
    "ofi",
    "fx2trt",
    "onnxrt",
    "tensorrt",
    "ipex",
    "tvm",
)

_NO_EFFECT = "has no effect on the trained LoRA"
_ATTENTION = "lorapipe always uses PyTorch scaled-dot-product attention (what `sdpa` selects)"
_NOT_IMPL = "is not implemented by lorapipe"

_IGNORED: dict[str, str] = {
    "mem_eff_attn": _ATTENTION,
    "xformers": _ATTENTION,
    "sdpa": _ATTENTION,
    "lowram": _NO_EFFECT + " (lorapipe loads models with diffusers)",
    "highvram": _NO_EFFECT,
    "disable_mmap_load_safetensors": _NO_EFFECT,
    "vae_batch_size": "lorapipe encodes latents for caching one image at a time",
    "skip_cache_check": "lorapipe checks its latent cache by image content and settings, which is cheap",
    "log_tracker_name": "TensorBoard runs are named <log_prefix><timestamp> under logging_dir",
    "tokenizer_cache_dir": "lorapipe reads the tokenizers from the base model (works offline)",
    "cpu_offload_checkpointing": "unusable for SDXL in sd-scripts too",
    "fused_backward_pass": "sd-scripts uses it only in sdxl_train.py, not in network training",
    "max_data_loader_n_workers": "lorapipe prepares batches in the training process",
    "persistent_data_loader_workers": "lorapipe prepares batches in the training process",
    "ddp_timeout": "DDP setting; lorapipe averages LoRA gradients across processes itself (torch's default timeout)",
    "ddp_gradient_as_bucket_view": "DDP setting; lorapipe averages LoRA gradients across processes itself",
    "ddp_static_graph": "DDP setting; lorapipe averages LoRA gradients across processes itself",
    "zero_stage": "DeepSpeed is not used",
    "offload_optimizer_device": "DeepSpeed is not used",
    "offload_optimizer_nvme_path": "DeepSpeed is not used",
    "offload_param_device": "DeepSpeed is not used",
    "offload_param_nvme_path": "DeepSpeed is not used",
    "zero3_init_flag": "DeepSpeed is not used",
    "zero3_save_16bit_model": "DeepSpeed is not used",
    "console_log_level": "lorapipe's console output is fixed",
    "console_log_file": "lorapipe's console output is fixed",
    "console_log_simple": "lorapipe's console output is fixed",
    "log_config": "the effective config is written to train_summary.json instead",
    "log_tracker_config": "trackers are configured by lorapipe (TensorBoard under logging_dir, wandb offline)",
    "wandb_run_name": "wandb runs are named <log_prefix><timestamp>, like the TensorBoard ones",
    "wandb_api_key": "lorapipe logs wandb runs offline (`wandb sync` uploads them); no key is read from the config",
    "huggingface_repo_id": "lorapipe publishes through its own store/pipeline, not the Hugging Face Hub",
    "huggingface_repo_type": "lorapipe publishes through its own store/pipeline, not the Hugging Face Hub",
    "huggingface_path_in_repo": "lorapipe publishes through its own store/pipeline, not the Hugging Face Hub",
    "huggingface_token": "lorapipe publishes through its own store/pipeline, not the Hugging Face Hub",
    "huggingface_repo_visibility": "lorapipe publishes through its own store/pipeline, not the Hugging Face Hub",
    "save_state_to_huggingface": "lorapipe publishes through its own store/pipeline, not the Hugging Face Hub",
    "async_upload": "lorapipe publishes through its own store/pipeline, not the Hugging Face Hub",
    "no_token_padding": "sd-scripts' SDXL text encoding ignores it",
    "debug_dataset": "use `lorapipe dataset check` to inspect a dataset",
    "config_file": "a config file cannot name another one; pass it with --config",
}

_REJECTED: dict[str, str] = {
    "v2": "lorapipe trains SDXL only (sd-scripts asserts v2 is off for SDXL too)",
    "base_weights": "merging LoRAs into the base model before training " + _NOT_IMPL,
    "base_weights_multiplier": "merging LoRAs into the base model before training " + _NOT_IMPL,
    "lr_scheduler_type": "custom scheduler classes are not supported; pick an lr_scheduler name",
    "lr_scheduler_args": "custom scheduler classes are not supported; pick an lr_scheduler name",
    "initial_epoch": _NOT_IMPL + "; use resume with a save_state folder",
    "initial_step": _NOT_IMPL + "; use resume with a save_state folder",
    "skip_until_initial_step": _NOT_IMPL + "; use resume with a save_state folder",
    "deepspeed": "DeepSpeed " + _NOT_IMPL,
    "fp16_master_weights_and_gradients": "DeepSpeed " + _NOT_IMPL,
    "in_json": "fine-tuning metadata datasets are not supported; use <repeats>_<name> folders or dataset_config",
    "dataset_class": "custom dataset classes are not supported",
    "weighted_captions": "(word:1.2) caption weights " + _NOT_IMPL,
    "conditioning_data_dir": "mask images for masked_loss " + _NOT_IMPL + "; put the mask in the images' alpha "
    "channel and set alpha_mask = true",
    "save_n_epoch_ratio": _NOT_IMPL + "; use save_every_n_epochs",
    "resume_from_huggingface": "resuming from the Hub " + _NOT_IMPL + "; download the state folder and use resume",
    "output_config": "use `lorapipe config check FILE` to see the effective config",
    "train_inpainting": "inpainting training " + _NOT_IMPL,
}

_MAPPED: dict[str, tuple[str, str]] = {
    "use_8bit_adam": ("optimizer_type", 'legacy sd-scripts flag; means optimizer_type = "AdamW8bit"'),
    "use_lion_optimizer": ("optimizer_type", 'legacy sd-scripts flag; means optimizer_type = "Lion"'),
    "sdxl_cache_text_encoder_outputs": ("cache_text_encoder_outputs", "kohya_ss GUI name"),
    "sdxl_no_half_vae": ("no_half_vae", "kohya_ss GUI name"),
    "optimizer": ("optimizer_type", "kohya_ss GUI name"),
    "max_resolution": ("resolution", "kohya_ss GUI name"),
    "lora_network_weights": ("network_weights", "older kohya_ss GUI name"),
}

_GUI_ONLY = "kohya_ss GUI setting that sd-scripts ignores"
_GUI_IGNORED: dict[str, str] = {
    "sdxl": _GUI_ONLY + " (it only picks sdxl_train_network.py)",
    "model_list": _GUI_ONLY + " (model dropdown state)",
    "noise_offset_type": _GUI_ONLY + " (it picks which noise keys the GUI writes)",
    "additional_parameters": _GUI_ONLY + " (raw extra command-line text); write the options as keys instead",
    "learning_rate_te": _GUI_ONLY + " (DreamBooth tab); use text_encoder_lr",
    "learning_rate_te1": _GUI_ONLY + " (DreamBooth tab); use text_encoder_lr",
    "learning_rate_te2": _GUI_ONLY + " (DreamBooth tab); use text_encoder_lr",
    "text_encoder_lr1": "not an sd-scripts option (a documentation error); use text_encoder_lr",
    "text_encoder_lr2": "not an sd-scripts option (a documentation error); use text_encoder_lr",
    "stop_text_encoder_training": _GUI_ONLY + "; not supported for LoRA (the GUI zeroes it)",
    "stop_text_encoder_training_pct": _GUI_ONLY + "; not supported for LoRA (the GUI zeroes it)",
    "t5xxl_lr": _GUI_ONLY + " (FLUX/SD3)",
    "lowvram": "removed from sd-scripts",
    "num_cpu_threads_per_process": "accelerate launch setting, not a training option",
    "num_processes": "accelerate launch setting, not a training option; use `lorapipe train --processes N`",
    "num_machines": "accelerate launch setting, not a training option",
    "multi_gpu": "accelerate launch setting, not a training option; use `lorapipe train --processes N`",
    "gpu_ids": "accelerate launch setting, not a training option",
    "main_process_port": "accelerate launch setting, not a training option",
    "dynamo_mode": "accelerate launch setting, not a training option",
    "dynamo_use_fullgraph": "accelerate launch setting, not a training option",
    "dynamo_use_dynamic": "accelerate launch setting, not a training option",
    "extra_accelerate_launch_args": "accelerate launch setting, not a training option",
}
# kohya_ss GUI fields that become other keys (config/gui.py applies them before the table is consulted).
_GUI_MAPPED: dict[str, tuple[str, str]] = {
    "LoRA_type": (
        "network_module",
        "kohya_ss GUI field; picks network_module and which GUI fields become "
        f"network_args, as the GUI does ({', '.join(LORA_TYPES)})",
    ),
    "epoch": (
        "max_train_epochs",
        "kohya_ss GUI field; the GUI trains this many epochs when max_train_steps is not set",
    ),
    "lr_warmup": ("lr_warmup_steps", "kohya_ss GUI field (percent of all steps); read as a fraction"),
    **{old: ("network_args", f"older kohya_ss GUI name of {new}") for old, new in RENAMED_FIELDS.items()},
}


def _build_table() -> dict[str, KeySpec]:
    table: dict[str, KeySpec] = {}
    for name in kohya_fields():
        table[name] = KeySpec(name, SUPPORTED, "TrainConfig." + name)
    for name in sorted(DATASET_KEYS):
        if name not in table:
            table[name] = KeySpec(name, DATASET, "read by the dataset layer into TrainConfig.dataset")
    for name, reason in _IGNORED.items():
        table.setdefault(name, KeySpec(name, IGNORED, reason))
    for name, reason in _REJECTED.items():
        table.setdefault(name, KeySpec(name, REJECTED, reason))
    for name, (target, reason) in _MAPPED.items():
        table.setdefault(name, KeySpec(name, MAPPED, reason, maps_to=target, gui=not name.startswith("use_")))
    for name, reason in _GUI_IGNORED.items():
        table.setdefault(name, KeySpec(name, IGNORED, reason, gui=True))
    for name, (target, reason) in _GUI_MAPPED.items():
        table.setdefault(name, KeySpec(name, MAPPED, reason, maps_to=target, gui=True))
    for name in GUI_NETWORK_FIELDS:
        table.setdefault(
            name,
            KeySpec(
                name,
                MAPPED,
                "kohya_ss GUI field; becomes network_args for the LoRA_types "
                "the GUI uses it with, ignored with a warning for the others",
                maps_to="network_args",
                gui=True,
            ),
        )
    return table


KEY_TABLE: dict[str, KeySpec] = _build_table()
