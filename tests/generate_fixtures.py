"""Helpers for generate/server/registry tests: Kohya-format LoRA files written against the tiny model."""

from __future__ import annotations

from pathlib import Path


def write_kohya_lora(
    path: Path,
    model_dir: Path,
    *,
    seed: int,
    rank: int = 4,
    scale: float = 0.5,
    text_encoders: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a Kohya-keyed SDXL LoRA with random non-zero up and down weights (so it changes images)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    models = {
        "unet": UNet2DConditionModel.from_pretrained(model_dir / "unet"),
        "text_encoder": CLIPTextModel.from_pretrained(model_dir / "text_encoder") if text_encoders else None,
        "text_encoder_2": (
            CLIPTextModelWithProjection.from_pretrained(model_dir / "text_encoder_2") if text_encoders else None
        ),
    }
    return write_kohya_lora_for(models, path, seed=seed, rank=rank, scale=scale, metadata=metadata)


def write_kohya_lora_for(
    models: dict, path: Path, *, seed: int, rank: int = 4, scale: float = 0.5, metadata: dict[str, str] | None = None
) -> Path:
    """Like write_kohya_lora, for models already in memory ({"unet", "text_encoder", "text_encoder_2"})."""
    import torch
    from safetensors.torch import save_file

    from lorapipe.lora.targets import kohya_target_names

    te1, te2 = models.get("text_encoder"), models.get("text_encoder_2")
    targets = kohya_target_names(models["unet"], te1, te2, conv=False, train_text_encoder=te1 is not None)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for target in targets:
        module = models[target.part].get_submodule(target.module_name)
        if isinstance(module, torch.nn.Linear):
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        else:  # 1x1 conv
            down_shape, up_shape = (rank, module.in_channels, 1, 1), (module.out_channels, rank, 1, 1)
        tensors[f"{target.kohya_name}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * scale
        tensors[f"{target.kohya_name}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * scale
        tensors[f"{target.kohya_name}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", **(metadata or {})})
    return path


def write_loha_for(models: dict, path: Path, *, seed: int, rank: int = 4, scale: float = 0.3) -> Path:
    """A LyCORIS LoHa (`algo=loha`) over Kohya's targets with conv layers, in LyCORIS's key names and shapes."""
    import torch
    from safetensors.torch import save_file

    from lorapipe.lora.targets import kohya_target_names

    targets = kohya_target_names(models["unet"], models.get("text_encoder"), models.get("text_encoder_2"), conv=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for target in targets:
        out, inp, *kernel = models[target.part].get_submodule(target.module_name).weight.shape
        flat_in = inp * (kernel[0] * kernel[1] if kernel else 1)
        for half in ("w1", "w2"):
            tensors[f"{target.kohya_name}.hada_{half}_a"] = torch.randn(out, rank, generator=generator) * scale
            tensors[f"{target.kohya_name}.hada_{half}_b"] = torch.randn(rank, flat_in, generator=generator) * scale
        tensors[f"{target.kohya_name}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "loha"}'}
    save_file(tensors, str(path), metadata=metadata)
    return path


def tiny_lora_folder(root: Path, model_dir: Path) -> Path:
    """A LoRA folder with `toy` (alias `dwjz_toy`) and `style` (UNet-only), as a trainer would publish them."""
    folder = root / "loras"
    write_kohya_lora(folder / "toy.safetensors", model_dir, seed=1, metadata={"ss_output_name": "dwjz_toy"})
    write_kohya_lora(folder / "style.safetensors", model_dir, seed=2, text_encoders=False)
    return folder


def load_generator(model_dir: Path, lora_dir: Path | None):
    import torch

    from lorapipe.generate.generator import Generator
    from lorapipe.generate.quiet import quiet_model_loading

    torch.set_num_threads(1)
    quiet_model_loading()
    return Generator.load(str(model_dir), lora_dir=lora_dir, device="cpu", dtype="fp32")


class RunningServer:
    """A real uvicorn server on 127.0.0.1 in a background thread (for webuiapi, browsers, disconnects)."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )

    def __enter__(self):
        import threading
        import time

        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self._server.should_exit = True
        self._thread.join(30)
