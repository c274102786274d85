"""Caches of VAE latents and text-encoder outputs (Kohya's cache_latents[_to_disk], cache_text_encoder_outputs),
and `precache`, which fills them before the first step.

Latents are keyed by a hash of the exact bucket-sized pixels fed to the VAE plus a fingerprint of the VAE, so a
cache entry is reused across runs while the image and the bucket/resize settings are unchanged and silently
refreshed otherwise (sd-scripts only checks that the keys exist: kohya-ss/sd-scripts#1771). On disk the file is
`<image>_<WWWW>x<HHHH>_sdxl.npz` next to the image, as sd-scripts names it; TE outputs go to `<image>_te_outputs.npz`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lorapipe.atomic import atomic_target
from lorapipe.config.checks import CAPTION_RANDOMISERS, subset_options
from lorapipe.dataset.batches import load_sample
from lorapipe.errors import DatasetError
from lorapipe.train.distributed import wait_for_everyone


def pixel_key(pixels: np.ndarray) -> str:
    """Content hash of an HxWx3 uint8 array (shape included)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def module_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a module's weights (a cached latent is only valid for the VAE that made it)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def latent_cache_path(image_path: Path, original_size_wh: tuple[int, int]) -> Path:
    """sd-scripts' name: `<base>_<WWWW>x<HHHH>_sdxl.npz` with the original image size."""
    w, h = original_size_wh
    return Path(image_path).with_name(f"{Path(image_path).stem}_{w:04d}x{h:04d}_sdxl.npz")


def te_cache_path(image_path: Path) -> Path:
    return Path(image_path).with_name(f"{Path(image_path).stem}_te_outputs.npz")


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        # The `.npz` suffix keeps a torn temporary out of the dataset hash (it ignores `.npz`).
        with atomic_target(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    except OSError as exc:
        raise DatasetError(
            f"{path}: cannot write the cache file ({exc.strerror}); make the image folder writable "
            "or set cache_latents_to_disk / cache_text_encoder_outputs_to_disk = false"
        ) from exc


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return {}  # a torn or foreign file is simply rebuilt


class LatentCache:
    """Pixels -> scaled latents, in memory and optionally on disk.

    `encode(pixels_batch_uint8, keys) -> latents` does the VAE work; `keys` seed the latent sampling so the same
    image always gets the same cached latent (sd-scripts samples the latent distribution once).
    """

    def __init__(self, encode: Callable[[np.ndarray, list[str]], torch.Tensor], vae_fingerprint: str, *, to_disk: bool):
        self._encode = encode
        self._vae = vae_fingerprint
        self._to_disk = to_disk
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0

    def _disk_key(self, pixel_hash: str) -> str:
        return f"lp_{hashlib.blake2b((pixel_hash + self._vae).encode(), digest_size=12).hexdigest()}"

    def latents(
        self, pixels: list[np.ndarray], image_paths: list[Path], original_sizes_wh: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Latents for a batch of same-size pixel arrays, encoding only the ones not cached yet."""
        keys = [pixel_key(p) for p in pixels]
        missing = [i for i, k in enumerate(keys) if k not in self._memory]
        if missing and self._to_disk:
            for i in list(missing):
                stored = _read_npz(latent_cache_path(image_paths[i], original_sizes_wh[i]))
                entry = stored.get(self._disk_key(keys[i]))
                if entry is not None:
                    self._memory[keys[i]] = torch.from_numpy(entry)
                    self.disk_hits += 1
                    missing.remove(i)
        if missing:
            encoded = self._encode(np.stack([pixels[i] for i in missing]), [keys[i] for i in missing])
            for row, i in enumerate(missing):
                latent = encoded[row].detach().to("cpu", torch.float32).contiguous()
                self._memory[keys[i]] = latent
                if self._to_disk:
                    self._store(image_paths[i], original_sizes_wh[i], keys[i], latent)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self._memory[k] for k in keys])

    def _store(self, image_path: Path, size_wh: tuple[int, int], key: str, latent: torch.Tensor) -> None:
        path = latent_cache_path(image_path, size_wh)
        arrays = _read_npz(path)
        arrays[self._disk_key(key)] = latent.numpy()
        # Kohya's own keys, so sd-scripts can read the newest entry too.
        arrays["latents"] = latent.numpy()
        arrays["original_size"] = np.array(size_wh)
        _atomic_savez(path, arrays)

    def __len__(self) -> int:
        return len(self._memory)


class TextEncoderCache:
    """Caption -> (context, pooled) for frozen text encoders, in memory and optionally on disk."""

    def __init__(
        self,
        encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
        te_fingerprint: str,
        *,
        to_disk: bool,
        te1_width: int,
    ):
        self._encode = encode
        self._te1_width = te1_width
        self._te = te_fingerprint
        self._to_disk = to_disk
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _key(self, caption: str) -> str:
        return hashlib.blake2b((caption + "\0" + self._te).encode(), digest_size=16).hexdigest()

    def outputs(self, captions: list[str], image_paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [self._key(c) for c in captions]
        missing = [i for i, k in enumerate(keys) if k not in self._memory]
        if missing and self._to_disk:
            for i in list(missing):
                stored = _read_npz(te_cache_path(image_paths[i]))
                if stored.get("lorapipe_key") is not None and str(stored["lorapipe_key"]) == keys[i]:
                    context = np.concatenate([stored["hidden_state1"], stored["hidden_state2"]], axis=-1)
                    self._memory[keys[i]] = (torch.from_numpy(context), torch.from_numpy(stored["pool2"]))
                    missing.remove(i)
        if missing:
            context, pooled = self._encode([captions[i] for i in missing])
            for row, i in enumerate(missing):
                entry = (context[row].detach().to("cpu", torch.float32), pooled[row].detach().to("cpu", torch.float32))
                self._memory[keys[i]] = entry
                if self._to_disk:
                    self._store(image_paths[i], keys[i], entry)
        contexts = torch.stack([self._memory[k][0] for k in keys])
        pooled = torch.stack([self._memory[k][1] for k in keys])
        return contexts, pooled

    def _store(self, image_path: Path, key: str, entry) -> None:
        context, pooled = entry
        # sd-scripts' keys: TE1 and TE2 hidden states separately, plus the pooled TE2 vector.
        _atomic_savez(
            te_cache_path(image_path),
            {
                "hidden_state1": context[..., : self._te1_width].numpy(),
                "hidden_state2": context[..., self._te1_width :].numpy(),
                "pool2": pooled.numpy(),
                "lorapipe_key": np.array(key),
            },
        )


def caption_randomiser(dataset) -> tuple[str, str] | None:
    """(subset name, option) of the first subset whose captions change between uses, else None (enable_wildcard
    counts too: {a|b} picks a variant per use)."""
    found = subset_options(dataset, (*CAPTION_RANDOMISERS, "enable_wildcard"))
    return found[0] if found else None


# ---- filling the caches before the first step ---------------------------------------------------------------------
# Then the frozen encoders move off the GPU (sd-scripts caches up front for the same reason: the VAE and text
# encoders then cost no VRAM while training).


def precache_in_turn(session, plan) -> None:
    """Fill the caches; with several processes the main one goes first, so the others find a disk cache ready
    instead of all encoding the same images into the same files."""
    processes, cfg = plan.processes, plan.config
    to_disk = cfg.cache_latents_to_disk or cfg.cache_text_encoder_outputs_to_disk
    if not (processes.is_distributed and to_disk):
        precache(session, plan)  # one process, or in-memory caches that every process fills for itself
        return
    if processes.is_main:
        precache(session, plan)
    wait_for_everyone(session.accelerator)
    if not processes.is_main:
        precache(session, plan)


def precache(session, plan, *, offload: bool = True) -> int:
    """Encode every distinct training image (and its mirror for flip_aug) and caption once; returns #items."""
    models = session.models
    # The automatic text cache fills as captions come up (no image decoding up front, encoders stay in place).
    te_cache = None if session.te_cache_automatic else session.te_cache
    if session.latent_cache is None and te_cache is None:
        return 0
    seen = set()
    for item in plan.scan.items:
        if item.path in seen:
            continue
        seen.add(item.path)
        sample = load_sample(item, plan.blueprint, 1, random.Random(0))
        size_wh = (sample.original_size[1], sample.original_size[0])
        if session.latent_cache is not None:
            pixels = np.ascontiguousarray(sample.pixels[:, ::-1]) if sample.flipped else sample.pixels
            variants = [pixels, np.ascontiguousarray(pixels[:, ::-1])] if item.subset.flip_aug else [pixels]
            for variant in variants:
                session.latent_cache.latents([variant], [item.path], [size_wh])
        if te_cache is not None:
            te_cache.outputs([sample.caption], [item.path])
    if offload and models.device.type == "cuda":
        if session.latent_cache is not None:
            models.vae.to("cpu")
        if te_cache is not None and not models.train_text_encoder:
            models.text_encoder.to("cpu")
            models.text_encoder_2.to("cpu")
        torch.cuda.empty_cache()
    return len(seen)
