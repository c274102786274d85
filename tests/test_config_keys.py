"""The key table covers every sdxl_train_network.py option and the kohya_ss GUI keys users carry over."""

from __future__ import annotations

import dataclasses

from lorapipe.config import KEY_TABLE, TrainConfig
from lorapipe.config.keys import DATASET, IGNORED, MAPPED, REJECTED, SUPPORTED
from lorapipe.dataset.blueprint import DATASET_KEYS

# The option table of sd-scripts' sdxl_train_network.py (model, network, optimizer, length, dataset, noise/loss,
# sampling/saving/logging/metadata/validation groups), as documented for sd-scripts 0.10.x.
SD_SCRIPTS_OPTIONS = """
pretrained_model_name_or_path vae v2 v_parameterization tokenizer_cache_dir disable_mmap_load_safetensors
mixed_precision full_fp16 full_bf16 fp8_base fp8_base_unet no_half_vae lowram highvram clip_skip max_token_length
mem_eff_attn xformers sdpa torch_compile dynamo_backend gradient_checkpointing cpu_offload_checkpointing
network_module network_dim network_alpha network_dropout network_args network_weights dim_from_weights
network_train_unet_only network_train_text_encoder_only base_weights base_weights_multiplier scale_weight_norms
training_comment no_metadata save_model_as
optimizer_type optimizer_args use_8bit_adam use_lion_optimizer learning_rate unet_lr text_encoder_lr max_grad_norm
lr_scheduler lr_warmup_steps lr_decay_steps lr_scheduler_num_cycles lr_scheduler_power lr_scheduler_timescale
lr_scheduler_min_lr_ratio lr_scheduler_type lr_scheduler_args fused_backward_pass gradient_accumulation_steps
max_train_steps max_train_epochs train_batch_size max_data_loader_n_workers persistent_data_loader_workers seed
initial_epoch initial_step skip_until_initial_step ddp_timeout ddp_gradient_as_bucket_view ddp_static_graph
deepspeed zero_stage offload_optimizer_device offload_optimizer_nvme_path offload_param_device
offload_param_nvme_path zero3_init_flag zero3_save_16bit_model fp16_master_weights_and_gradients
train_data_dir reg_data_dir dataset_config in_json dataset_repeats dataset_class resolution enable_bucket
min_bucket_reso max_bucket_reso bucket_reso_steps bucket_no_upscale resize_interpolation caption_extension
caption_extention caption_separator keep_tokens keep_tokens_separator secondary_separator enable_wildcard
caption_prefix caption_suffix shuffle_caption caption_dropout_rate caption_dropout_every_n_epochs
caption_tag_dropout_rate token_warmup_min token_warmup_step weighted_captions color_aug flip_aug random_crop
face_crop_aug_range alpha_mask masked_loss conditioning_data_dir cache_latents cache_latents_to_disk vae_batch_size
skip_cache_check cache_text_encoder_outputs cache_text_encoder_outputs_to_disk cache_info prior_loss_weight
debug_dataset
noise_offset noise_offset_random_strength adaptive_noise_scale multires_noise_iterations multires_noise_discount
ip_noise_gamma ip_noise_gamma_random_strength zero_terminal_snr min_timestep max_timestep loss_type huber_schedule
huber_c huber_scale min_snr_gamma debiased_estimation_loss scale_v_pred_loss_like_noise_pred v_pred_like_loss
output_dir output_name save_precision save_every_n_epochs save_every_n_steps save_n_epoch_ratio save_last_n_epochs
save_last_n_steps save_last_n_epochs_state save_last_n_steps_state save_state save_state_on_train_end resume
sample_prompts sample_every_n_steps sample_every_n_epochs sample_at_first sample_sampler
logging_dir log_with log_prefix log_tracker_name log_tracker_config log_config wandb_run_name wandb_api_key
console_log_level console_log_file console_log_simple
huggingface_repo_id huggingface_repo_type huggingface_path_in_repo huggingface_token huggingface_repo_visibility
save_state_to_huggingface resume_from_huggingface async_upload
metadata_title metadata_author metadata_description metadata_license metadata_tags metadata_usage_hint
metadata_thumbnail metadata_merged_from metadata_trigger_phrase metadata_preprocessor metadata_is_negative_embedding
validation_split validation_seed validate_every_n_steps validate_every_n_epochs max_validation_steps
config_file output_config no_token_padding
""".split()

GUI_KEYS = """
sdxl model_list unit train_on_input LoRA_type noise_offset_type conv_dim conv_alpha epoch additional_parameters
sdxl_cache_text_encoder_outputs sdxl_no_half_vae optimizer max_resolution lr_warmup lora_network_weights
num_cpu_threads_per_process stop_text_encoder_training block_dims rank_dropout loraplus_lr_ratio
""".split()


def test_every_sd_scripts_option_is_in_the_table() -> None:
    missing = [name for name in SD_SCRIPTS_OPTIONS if name not in KEY_TABLE]
    assert not missing, missing


def test_gui_only_keys_are_in_the_table_and_never_supported_directly() -> None:
    for name in GUI_KEYS:
        assert name in KEY_TABLE, name
        assert KEY_TABLE[name].status in (IGNORED, MAPPED, REJECTED), name
        assert KEY_TABLE[name].gui, name


def test_supported_keys_are_exactly_the_trainconfig_attributes() -> None:
    bookkeeping = {"dataset", "source", "dataset_dir", "conv_dim", "conv_alpha", "network_options", "lycoris"}
    attributes = {f.name for f in dataclasses.fields(TrainConfig)} - bookkeeping
    supported = {name for name, spec in KEY_TABLE.items() if spec.status == SUPPORTED}
    assert supported == attributes


def test_network_args_split_into_implemented_and_refused() -> None:
    from lorapipe.config.keys import NETWORK_ARGS_REJECTED, NETWORK_ARGS_SUPPORTED

    # Only sd-scripts' block-wise learning-rate weights are still refused; everything else networks.lora takes works.
    assert set(NETWORK_ARGS_REJECTED) == {"down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold"}
    assert set(NETWORK_ARGS_SUPPORTED) == {
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
    }
    # The GUI fields of refused arguments become network_args like the others; the network_args reader refuses them.
    for name in ("block_dims", "rank_dropout", "loraplus_lr_ratio", "conv_block_alphas", *NETWORK_ARGS_REJECTED):
        assert KEY_TABLE[name].status == MAPPED and KEY_TABLE[name].maps_to == "network_args", name
    assert KEY_TABLE["torch_compile"].status == SUPPORTED and KEY_TABLE["dynamo_backend"].status == SUPPORTED


def test_dataset_layer_keys_are_known() -> None:
    for name in DATASET_KEYS:
        assert KEY_TABLE[name].status in (SUPPORTED, DATASET), name


def test_every_entry_says_why() -> None:
    statuses = {SUPPORTED, DATASET, MAPPED, IGNORED, REJECTED}
    for name, spec in KEY_TABLE.items():
        assert spec.name == name and spec.status in statuses and spec.reason, name
        assert (spec.maps_to is not None) == (spec.status == MAPPED), name
        if spec.maps_to:
            assert KEY_TABLE[spec.maps_to].status in (SUPPORTED, DATASET), name


def test_trainconfig_is_frozen() -> None:
    config = TrainConfig()
    try:
        config.learning_rate = 1.0  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        return
    raise AssertionError("TrainConfig must be frozen")
