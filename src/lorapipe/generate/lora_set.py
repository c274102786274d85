"""The fused LoRA set of one pipeline: LoRAs merged into the base weights, kept while requests ask for the same set.

diffusers loads the Kohya files (`load_lora_weights` reads Kohya keys), sets per-component weights
(`set_adapters`: UNet multiplier for the UNet, TE multiplier for both text encoders) and merges them
(`fuse_lora`). The peft wrappers are then removed (`unload_lora_weights`), so a fused set costs nothing per
denoising step. The original weights of every merged layer are kept on the CPU beforehand and copied back when
the set changes: switching sets is exact, with no drift from repeated fuse/unfuse in half precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lorapipe.errors import GenerationError
from lorapipe.registry import LoraEntry

_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class ActiveLora:
    """A LoRA requested by a prompt: the registry entry, the name as written, and its two multipliers."""

    entry: LoraEntry
    mentioned_as: str
    te_weight: float
    unet_weight: float


class FusedLoraSet:
    """Keeps at most one set of LoRAs merged into `pipe`; `apply` is a no-op when the set is unchanged."""

    def __init__(self, pipe, verify: Callable[[LoraEntry], object] | None = None):
        self._pipe = pipe
        self._verify = verify
        self._key: tuple = ()
        self._originals: dict[tuple[str, str], dict[str, object]] = {}
        self.loads = 0  # how many times a set was (re)built; tests and benchmarks read it

    @property
    def key(self) -> tuple:
        return self._key

    def apply(self, loras: Sequence[ActiveLora]) -> None:
        key = tuple((l.entry.path, l.entry.sha256_tensors, l.te_weight, l.unet_weight) for l in loras)
        if key == self._key:
            return
        self.clear()
        if not loras:
            return
        try:
            self._fuse(loras)
        except GenerationError:
            self.clear()
            raise
        except Exception as exc:  # a file diffusers cannot map: leave the pipeline clean, report one line
            self.clear()
            names = ", ".join(l.entry.name for l in loras)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GenerationError(f"LoRA {names}: could not be applied ({first}); is it an SDXL LoRA?") from exc
        self._key = key
        self.loads += 1

    def clear(self) -> None:
        """Put back the original weights of every merged layer and forget the set."""
        import torch

        with torch.no_grad():
            for (component, module_name), tensors in self._originals.items():
                module = getattr(self._pipe, component).get_submodule(module_name)
                for attr, saved in tensors.items():
                    getattr(module, attr).copy_(saved)
        # Adapters left behind by a failed load would otherwise stay in the forward pass.
        if any(getattr(self._pipe, c, None) is not None and getattr(getattr(self._pipe, c), "peft_config", None)
               for c in _COMPONENTS):
            self._pipe.unload_lora_weights()
        self._originals = {}
        self._key = ()

    def _fuse(self, loras: Sequence[ActiveLora]) -> None:
        from safetensors.torch import load_file

        adapter_names = []
        weights = []
        for index, lora in enumerate(loras):
            path = self._verify(lora.entry) if self._verify else lora.entry.path
            adapter = f"lorapipe_{index}"
            # A state dict, never a path string: diffusers would treat an unknown string as a hub id.
            self._pipe.load_lora_weights(load_file(str(path)), adapter_name=adapter)
            adapter_names.append(adapter)
            weights.append({"unet": lora.unet_weight, "text_encoder": lora.te_weight,
                            "text_encoder_2": lora.te_weight})
        self._pipe.set_adapters(adapter_names, weights)
        self._save_originals()
        self._pipe.fuse_lora(components=list(_COMPONENTS), lora_scale=1.0, adapter_names=adapter_names)
        self._pipe.unload_lora_weights()

    def _save_originals(self) -> None:
        """Copy the weights of every layer a LoRA wraps (peft's `base_layer`) to the CPU."""
        for component in _COMPONENTS:
            model = getattr(self._pipe, component, None)
            if model is None:
                continue
            for name, module in model.named_modules():
                base = getattr(module, "base_layer", None)
                if base is None or name.endswith("base_layer"):
                    continue
                saved = {"weight": base.weight.detach().to("cpu", copy=True)}
                if getattr(base, "bias", None) is not None:
                    saved["bias"] = base.bias.detach().to("cpu", copy=True)
                self._originals[(component, name)] = saved
