"""SDXL facts, base-model loading, the random-weight model factory and offline tokenizers.

Submodules import torch/diffusers lazily where they can; this package's `__init__` imports nothing heavy.
"""
