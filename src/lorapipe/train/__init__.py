"""The SDXL LoRA trainer: Kohya sd-scripts semantics on diffusers, peft and accelerate.

`run.run_training(...)` is the entry point; each concern (noise, loss, caching, optimizers, samples, checkpoints,
progress, summary) lives in its own module so the loop in `loop.py` stays short. Nothing here imports torch at
package import time.
"""
