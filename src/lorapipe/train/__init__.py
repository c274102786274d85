"""The SDXL LoRA trainer: Kohya sd-scripts semantics on diffusers, peft and accelerate.

`run.run_training(...)` is the entry point (`lorapipe train` and `sagemaker_entry` call it). A run reads as
plan (config + dataset checks, no torch) -> session (models, optimizer, schedule, caches) -> loop (epochs, the
optimizer step, one micro-batch's loss, max-norm) -> run (after each step and epoch: files, state, previews,
validation). Beside them: noise, loss, caching, sampling, saving (LoRA files), checkpoints (state folders), report
(progress and `train_summary.json`). Nothing here imports torch at package import time.

Where lorapipe knowingly differs from sd-scripts (each one a fix for a reported pain point):
- Resume continues mid-epoch at the exact next batch, with optimizer, schedule and RNG restored, so the loss
  curve is the uninterrupted one (sd-scripts restarts a partial epoch from its first batch); a state folder from
  another dataset (images, captions, repeats) is refused before any model loads.
- Cached latents are keyed by the exact pixels and the VAE weights, so an edited image or changed bucket setting
  is re-encoded (sd-scripts reuses any npz with the right keys, kohya-ss/sd-scripts#1771).
- A non-finite loss (or gradient) stops before the optimizer step, names the batch's files, writes the last good
  weights as `NAME-stepNNNNNNNN.safetensors` and fails; a CUDA OOM names the options that cut memory.
- SIGTERM saves a complete state and stops (sd-scripts has no handler); `SOURCE_DATE_EPOCH` pins the metadata
  timestamps so the same seed gives byte-identical files.
"""
