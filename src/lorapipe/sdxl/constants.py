"""Named SDXL facts shared by the trainer and the generator (no torch import)."""

# Latent scaling of the SDXL VAE (sd_xl_base.yaml scale_factor).
VAE_SCALE_FACTOR = 0.13025
# CLIP context: 75 content tokens between BOS and EOS.
CLIP_CHUNK_TOKENS = 75
CLIP_MAX_LENGTH = 77
CLIP_VOCAB_SIZE = 49408
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
# Kohya's max_token_length choices (sd-scripts: None means 75).
ALLOWED_MAX_TOKEN_LENGTHS = (75, 150, 225)
# SDXL training noise schedule (sd-scripts and diffusers' SDXL scheduler config).
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
BETA_SCHEDULE = "scaled_linear"
# Single-file checkpoint prefixes in the original SGM layout.
SGM_UNET_PREFIX = "model.diffusion_model."
SGM_VAE_PREFIX = "first_stage_model."
SGM_TE1_PREFIX = "conditioner.embedders.0.transformer."
SGM_TE2_PREFIX = "conditioner.embedders.1.model."
# A checkpoint is SDXL (base) when it has both text encoders and the UNet's added-condition embedding.
SGM_SDXL_MARKERS = (SGM_TE2_PREFIX + "ln_final.weight", SGM_UNET_PREFIX + "label_emb.0.0.weight")
SDXL_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
