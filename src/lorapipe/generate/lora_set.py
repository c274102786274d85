"""The fused LoRA set of one pipeline: LoRAs merged into the base weights, kept while requests ask for the same set.

Every file is read the way A1111 and ComfyUI read it: its keys are planned from the header (`lora.file_layers`:
which layer, which network type), each layer's ΔW is computed by its network type (`lora.networks`) from the
original weight, and W + Σ multiplier × ΔW is written into the layer, with the UNet multiplier for UNet layers and
the TE multiplier for both text encoders. No wrapper stays in the forward pass, so a fused set costs nothing per
denoising step. The original weights of every changed layer are kept on the CPU beforehand and copied back when
the set changes: switching sets is exact, with no drift from repeated fuse/unfuse in half precision.

A file that cannot be applied (missing, broken, for SD 1.x, wrong sizes) is left out with a warning naming it, as
A1111 does, and the others still apply; keys nothing reads are reported too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lorapipe.errors import GenerationError
from lorapipe.registry import LoraEntry, read_safetensors_header

_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class ActiveLora:
    """A LoRA requested by a prompt: the registry entry, the name as written, and its two multipliers."""

    entry: LoraEntry
    mentioned_as: str
    te_weight: float
    unet_weight: float


@dataclass(frozen=True)
class AppliedSet:
    """What `FusedLoraSet.apply` did: the LoRAs now merged, and one warning per file left out or partly read."""

    loras: tuple[ActiveLora, ...] = ()
    warnings: tuple[str, ...] = ()


class _LoraFailed(Exception):
    def __init__(self, lora: ActiveLora, reason: str):
        super().__init__(reason)
        self.lora = lora


class FusedLoraSet:
    """Keeps at most one set of LoRAs merged into `pipe`; `apply` is a no-op when the set is unchanged."""

    def __init__(self, pipe, verify: Callable[[LoraEntry], object] | None = None):
        self._pipe = pipe
        self._verify = verify
        self._key: tuple = ()
        self._applied = AppliedSet()
        self._originals: dict[tuple[str, str], dict[str, object]] = {}
        self._keymap = None
        self._embeddings: list[tuple[list[str], object, object]] = []  # (tokens, tokenizer, text encoder) added
        self.loads = 0  # how many times a set was (re)built; tests and benchmarks read it

    @property
    def key(self) -> tuple:
        return self._key

    def apply(self, loras: Sequence[ActiveLora]) -> AppliedSet:
        """Merge exactly `loras` (after undoing the previous set); files that fail are left out with a warning."""
        key = tuple((lora.entry.path, lora.entry.sha256_tensors, lora.te_weight, lora.unet_weight) for lora in loras)
        if key == self._key:
            return self._applied
        self.clear()
        if not loras:
            return self._applied
        warnings: list[str] = []
        plans = []
        for lora in loras:
            try:
                plans.append(self._plan(lora, warnings))
            except GenerationError as exc:
                warnings.append(f"LoRA {lora.mentioned_as}: not applied: {exc}")
            except OSError as exc:  # removed or unreadable since the catalogue was built
                warnings.append(
                    f"LoRA {lora.mentioned_as}: not applied: {lora.entry.path.name}: "
                    f"{exc.strerror or exc}; check the LoRA folder"
                )
        while plans:
            try:
                self._fuse(plans)
                break
            except _LoraFailed as failed:  # leave that file out, put the weights back and merge the others
                self.clear()
                warnings.append(f"LoRA {failed.lora.mentioned_as}: not applied: {failed}")
                plans = [p for p in plans if p[0] is not failed.lora]
        self._key = key
        self._applied = AppliedSet(tuple(p[0] for p in plans), tuple(warnings))
        self.loads += 1
        return self._applied

    def clear(self) -> None:
        """Put back the original weights of every merged layer, remove bundled embeddings, forget the set."""
        import torch

        with torch.no_grad():
            for (component, module_name), tensors in self._originals.items():
                module = getattr(self._pipe, component).get_submodule(module_name)
                for attr, saved in tensors.items():
                    getattr(module, attr).copy_(saved)
        for tokens, tokenizer, text_encoder in reversed(self._embeddings):
            self._pipe.unload_textual_inversion(tokens, tokenizer=tokenizer, text_encoder=text_encoder)
        self._embeddings = []
        self._originals = {}
        self._key = ()
        self._applied = AppliedSet()

    # -- internals ----------------------------------------------------------------------------------------
    def _plan(self, lora: ActiveLora, warnings: list[str]):
        from lorapipe.lora.file_layers import plan_file
        from lorapipe.lora.keymap import PipelineKeyMap
        from lorapipe.lora.peft_config import find_adapter_config

        path = self._verify(lora.entry) if self._verify else lora.entry.path
        header = read_safetensors_header(path)
        if self._keymap is None:
            self._keymap = PipelineKeyMap({c: getattr(self._pipe, c, None) for c in _COMPONENTS})
        adapter = find_adapter_config(path, header.metadata, header.tensors)
        shapes = {k: v.shape for k, v in header.tensors.items()}
        plan = plan_file(str(lora.entry.name), shapes, self._keymap, adapter)
        note = plan.dropped_note()
        if note:
            warnings.append(f"LoRA {lora.mentioned_as}: {note}")
        return lora, path, plan

    def _fuse(self, plans) -> None:
        from safetensors import SafetensorError, safe_open

        with contextlib.ExitStack() as files:
            handles = {}
            for lora, path, _plan in plans:
                try:
                    handles[id(lora)] = files.enter_context(safe_open(str(path), framework="pt", device="cpu"))
                except (OSError, SafetensorError) as exc:
                    raise _LoraFailed(lora, f"cannot read {path.name} ({exc})") from None
            self._merge(plans, handles, SafetensorError)

    def _merge(self, plans, handles, read_error) -> None:
        """Write W + Σ multiplier × ΔW into every layer the plans touch (one layer at a time: peak memory is one
        layer's delta), then load bundled embeddings."""
        import torch

        from lorapipe.lora.networks import layer_delta

        by_layer = {}
        for lora, _path, plan in plans:
            for patch in plan.patches:
                by_layer.setdefault(patch.layer, []).append((lora, patch))
        with torch.no_grad():
            for layer, entries in by_layer.items():
                module = getattr(self._pipe, layer.component).get_submodule(layer.module_name)
                weight = module.weight.detach().float()
                total_w, total_b = torch.zeros_like(weight), None
                for lora, patch in entries:
                    multiplier = lora.unet_weight if layer.component == "unet" else lora.te_weight
                    if multiplier == 0:
                        continue
                    delta = self._layer_delta(handles[id(lora)], lora, patch, weight, layer_delta, read_error)
                    total_w += multiplier * delta.weight
                    if delta.bias is not None and getattr(module, "bias", None) is not None:
                        total_b = multiplier * delta.bias + (0 if total_b is None else total_b)
                self._write(layer, module, weight + total_w, total_b)
            for lora, _, plan in plans:
                if plan.embeddings:
                    self._load_embeddings(lora, handles[id(lora)], plan.embeddings)

    @staticmethod
    def _layer_delta(handle, lora, patch, weight, layer_delta, read_error):
        import torch

        try:
            tensors = {
                suffix: handle.get_tensor(key).to(weight.device, torch.float32) for suffix, key in patch.keys.items()
            }
            if patch.alpha is not None:  # the file's peft/diffusers lora_alpha (`lora.peft_config`)
                tensors["alpha"] = torch.tensor(patch.alpha)
            delta = layer_delta(patch.network, tensors, weight)
        except (read_error, RuntimeError, ValueError, IndexError) as exc:  # torch raises RuntimeError on bad shapes
            raise _LoraFailed(
                lora,
                f"{patch.network.title} layer {patch.layer.module_name}: "
                f"{str(exc).splitlines()[0]}; is it an SDXL LoRA?",
            ) from None
        if tuple(delta.weight.shape) != tuple(weight.shape):
            raise _LoraFailed(
                lora,
                f"layer {patch.layer.module_name} is {tuple(weight.shape)} in SDXL but "
                f"{tuple(delta.weight.shape)} in the file; is it an SDXL LoRA?",
            )
        if not torch.isfinite(delta.weight).all():
            raise _LoraFailed(lora, f"layer {patch.layer.module_name}: NaN or infinite values; re-download it")
        return delta

    def _write(self, layer, module, weight, bias_delta) -> None:
        key = (layer.component, layer.module_name)
        if key not in self._originals:
            saved = {"weight": module.weight.detach().to("cpu", copy=True)}
            if bias_delta is not None:
                saved["bias"] = module.bias.detach().to("cpu", copy=True)
            self._originals[key] = saved
        module.weight.copy_(weight.to(module.weight.dtype))
        if bias_delta is not None:
            module.bias.copy_((module.bias.float() + bias_delta).to(module.bias.dtype))

    def _load_embeddings(self, lora: ActiveLora, handle, keys: Sequence[str]) -> None:
        """Kohya `bundle_emb.<token>.clip_l` / `.clip_g`: textual-inversion vectors for each text encoder, loaded
        under `<token>` as A1111 loads bundled embeddings (diffusers' `load_textual_inversion`)."""
        encoders = {"clip_l": ("tokenizer", "text_encoder"), "clip_g": ("tokenizer_2", "text_encoder_2")}
        by_token: dict[str, dict[str, str]] = {}
        for key in keys:
            token, _, part = key[len("bundle_emb.") :].rpartition(".")
            by_token.setdefault(token, {})[part] = key
        for token, parts in by_token.items():
            if set(parts) != set(encoders):
                raise _LoraFailed(
                    lora, f"embedding {token!r} has {sorted(parts)}; SDXL embeddings need clip_l and clip_g"
                )
            if token in self._pipe.tokenizer.get_vocab():
                raise _LoraFailed(lora, f"embedding {token!r} is already a token; rename the embedding")
            for part, (tokenizer_name, encoder_name) in encoders.items():
                tokenizer, encoder = getattr(self._pipe, tokenizer_name), getattr(self._pipe, encoder_name)
                vectors = handle.get_tensor(parts[part]).to(encoder.dtype)
                self._pipe.load_textual_inversion(vectors, token=token, tokenizer=tokenizer, text_encoder=encoder)
                # diffusers names the vectors of a multi-vector embedding token, token_1, token_2, ...
                tokens = [token] + [f"{token}_{i}" for i in range(1, vectors.reshape(-1, vectors.shape[-1]).shape[0])]
                self._embeddings.append((tokens, tokenizer, encoder))
