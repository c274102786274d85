"""Kohya `networks.lora` for SDXL: targets (`targets`), the peft-backed network (`network`), the safetensors file
(`file`: atomic save with `sshs_*` hashes, torch-free header reading) and its `ss_*`/`modelspec.*` metadata
(`metadata`). Import the submodules directly; this package imports nothing heavy.
"""
