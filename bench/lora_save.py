"""Save a full-size SDXL LoRA (network_dim 16, 722 + 264 modules, fp16): lorapipe's atomic writer versus the
way sd-scripts saves (hash pass over an in-memory serialisation, then `safetensors.torch.save_file` straight to the
final name). Prints seconds and the ratio ours / baseline. Run: `python bench/lora_save.py [--dim 16] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path


def full_sdxl_tensors(dim: int):
    import torch

    from lorapipe.lora.network import attach_kohya_lora
    from lorapipe.sdxl.factory import build_models

    models = build_models("full", device="meta")
    network = attach_kohya_lora(
        models["unet"],
        models["text_encoder"],
        models["text_encoder_2"],
        network_dim=dim,
        network_alpha=dim / 2,
        lora_dtype=None,
    )
    gen = torch.Generator().manual_seed(0)
    return {
        k: (torch.randn(s, generator=gen) * 0.01).to(torch.float16) if s else torch.tensor(dim / 2, dtype=torch.float16)
        for k, s in network.kohya_shapes().items()
    }


def sd_scripts_style_save(path: Path, tensors, metadata) -> None:
    """sd-scripts networks/lora.py save_weights + train_util.precalculate_safetensors_hashes."""
    from safetensors.torch import save, save_file

    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    n = int.from_bytes(data[:8], "little")
    metadata = dict(
        metadata,
        sshs_model_hash=hashlib.sha256(data[8 + n :]).hexdigest(),
        sshs_legacy_hash=hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
    )
    save_file(tensors, str(path), metadata)


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from lorapipe.lora.file import save_kohya_lora

    tensors = full_sdxl_tensors(args.dim)
    size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(args.dim), "modelspec.title": "bench"}
    with tempfile.TemporaryDirectory() as tmp:
        ours = best_of(args.repeat, lambda: save_kohya_lora(Path(tmp) / "ours.safetensors", tensors, metadata))
        base = best_of(args.repeat, lambda: sd_scripts_style_save(Path(tmp) / "base.safetensors", tensors, metadata))
    print(f"{len(tensors)} tensors, {size_mb:.1f} MiB (fp16, dim {args.dim})")
    print(f"sd-scripts style save: {base:.3f} s")
    print(f"lorapipe save_kohya_lora (atomic, fsync, sorted header): {ours:.3f} s")
    print(f"ratio lorapipe / sd-scripts: {ours / base:.2f}")


if __name__ == "__main__":
    main()
