"""Kohya's `networks.lora` built from peft LoRA layers on the diffusers UNet and the transformers text encoders.

peft does the module surgery and the forward math (out = W x + up(down(x)) * alpha / dim, as sd-scripts); this
module decides *which* layers (`targets.py`), with which rank and alpha, and translates to Kohya's file names.

Where peft and sd-scripts differ, and what we do:
- Initialisation: both use Kaiming-uniform (a = sqrt(5)) for down and zeros for up, so a fresh network is a no-op.
- `network_dropout`: sd-scripts drops the *down output* (rank activations); peft's `lora_dropout` drops the layer
  *input*. We keep peft's dropout at 0 and add a forward hook on each `lora_A` that applies dropout to its output,
  which is sd-scripts' semantics exactly. The same hook does sd-scripts' `rank_dropout` (whole rank channels per
  sample, kept ones scaled by 1/(1-p)) and `module_dropout` (the whole LoRA skipped with probability p).
- Conv LoRA: peft's Conv2d LoRA has down = conv with the layer's kernel/stride/padding and up = 1x1 conv, the same
  shapes sd-scripts saves ([dim, in, k, k] and [out, dim, 1, 1]).
- alpha = None or 0 means alpha = dim (sd-scripts); peft's `lora_alpha` is set accordingly.
- Speed: peft's Linear forward serves every adapter setup (several adapters, mixed batches, merging, variants such
  as DoRA), a per-call cost that shows on SDXL's hundreds of small layers (about a tenth of a training step on the
  tiny model). A network with one adapter, no dropout hook and no variant never needs that, so its Linear layers
  get `_lean_linear_forward`, peft's own expression for that case (bitwise the same outputs and gradients, tested);
  `remove()` gives peft's forward back before peft unloads the layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MethodType
from typing import Any

from lorapipe.errors import ConfigError, TrainingError
from lorapipe.lora.ranks import BlockRanks, UnetBlocks, plan_ranks
from lorapipe.lora.targets import (
    KOHYA_CLASSES,
    PARTS,
    TEXT_ENCODER_PARTS,
    KohyaTarget,
    KohyaTargets,
    TargetClasses,
    kohya_target_names,
)

ADAPTER_NAME = "kohya"
DEFAULT_NETWORK_DIM = 4
DEFAULT_NETWORK_ALPHA = 1.0
DEFAULT_CONV_ALPHA = 1.0
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


@dataclass(frozen=True)
class KohyaLoadReport:
    """What `load_kohya_state_dict` did: modules filled, modules left at init, keys that matched nothing."""

    loaded: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()


@dataclass
class KohyaLoraNetwork:
    """A Kohya LoRA network living inside the models it was attached to (peft layers, adapter `kohya`)."""

    targets: KohyaTargets
    models: dict[str, Any]  # part -> model carrying peft layers
    alphas: dict[str, float]  # kohya_name -> alpha (what is saved as `.alpha`)
    ranks: dict[str, int]  # kohya_name -> rank
    _tuners: dict[str, Any] = field(default_factory=dict, repr=False)
    _hooks: list[Any] = field(default_factory=list, repr=False)
    _lean: list[Any] = field(default_factory=list, repr=False)  # layers running `_lean_linear_forward`

    # ---- structure -------------------------------------------------------------------------------------------
    @property
    def num_modules(self) -> dict[str, int]:
        """Wrapped modules per part ({"unet": 722, "text_encoder": 72, "text_encoder_2": 192} on SDXL)."""
        return self.targets.counts

    def lora_layer(self, target: KohyaTarget) -> Any:
        """The peft LoRA layer that wraps `target`."""
        return self.models[target.part].get_submodule(target.module_name)

    def lora_parameters(self, part: str | None = None) -> list[Any]:
        """The trainable LoRA tensors (down and up weights), optionally of one part."""
        params = []
        for target in self.targets:
            if part is None or target.part == part:
                layer = self.lora_layer(target)
                params += [layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight]
        return params

    # ---- optimisation ----------------------------------------------------------------------------------------
    def parameter_groups(
        self,
        unet_lr: float | None,
        text_encoder_lr: float | Sequence[float] | None,
        default_lr: float,
        *,
        loraplus_unet_lr_ratio: float | None = None,
        loraplus_text_encoder_lr_ratio: float | None = None,
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups as sd-scripts builds them.

        `unet_lr` / `text_encoder_lr` default to `default_lr` (`learning_rate`). `text_encoder_lr` may hold two
        values (te1, te2). A part whose LR is 0 is left out and frozen (sd-scripts: "not trained"). With a LoRA+
        ratio the `lora_up` weights of that part get their own group at LR x ratio. Each group carries a `name`.
        """
        named = {}
        for part in PARTS:
            params = self.lora_parameters(part)
            named[part] = [(kind, p) for p, kind in zip(params, ("lora_down", "lora_up") * len(params), strict=False)]
        return part_parameter_groups(
            named, unet_lr, text_encoder_lr, default_lr, (loraplus_unet_lr_ratio, loraplus_text_encoder_lr_ratio)
        )

    # ---- Kohya state dict ------------------------------------------------------------------------------------
    def kohya_shapes(self) -> dict[str, tuple[int, ...]]:
        """Kohya key -> tensor shape, without touching the data (works on the meta device)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for target in self.targets:
            layer = self.lora_layer(target)
            shapes[f"{target.kohya_name}.lora_down.weight"] = tuple(layer.lora_A[ADAPTER_NAME].weight.shape)
            shapes[f"{target.kohya_name}.lora_up.weight"] = tuple(layer.lora_B[ADAPTER_NAME].weight.shape)
            shapes[f"{target.kohya_name}.alpha"] = ()
        return shapes

    def kohya_state_dict(self, dtype: Any = None) -> dict[str, Any]:
        """Kohya-named tensors (`.lora_down.weight`, `.lora_up.weight`, scalar `.alpha`) on CPU in `dtype`.

        `dtype` None keeps the training dtype of the LoRA weights (sd-scripts without `save_precision`).
        """
        import torch

        state: dict[str, Any] = {}
        for target in self.targets:
            layer = self.lora_layer(target)
            down = layer.lora_A[ADAPTER_NAME].weight.detach()
            up = layer.lora_B[ADAPTER_NAME].weight.detach()
            out_dtype = dtype or down.dtype
            name = target.kohya_name
            state[f"{name}.lora_down.weight"] = down.to("cpu", out_dtype).contiguous()
            state[f"{name}.lora_up.weight"] = up.to("cpu", out_dtype).contiguous()
            state[f"{name}.alpha"] = torch.tensor(self.alphas[name], dtype=out_dtype)
        return state

    def load_kohya_state_dict(
        self, state_dict: Mapping[str, Any], *, source: str = "network_weights"
    ) -> KohyaLoadReport:
        """Fill the LoRA weights from a Kohya file's tensors (sd-scripts `network_weights`, or a resume).

        Accepts SGM names (sd-scripts) and diffusers-block names (diffusers' `convert_state_dict_to_kohya`). A
        file alpha different from the configured one is adopted, so the loaded network computes what the file
        did. Ranks must match the configured ones; otherwise a TrainingError names the module.
        """
        import torch

        by_name = {t.kohya_name: t for t in self.targets}
        aliases = diffusers_style_aliases(self.targets)
        grouped: dict[str, dict[str, Any]] = {}
        unexpected: list[str] = []
        for key, tensor in state_dict.items():
            stem, suffix = split_kohya_key(key)
            stem = aliases.get(stem, stem)
            if suffix is None or stem not in by_name:
                unexpected.append(key)
                continue
            grouped.setdefault(stem, {})[suffix] = tensor
        loaded = 0
        with torch.no_grad():
            for stem, parts in grouped.items():
                if ".lora_down.weight" not in parts or ".lora_up.weight" not in parts:
                    raise TrainingError(f"{source}: {stem} lacks lora_down or lora_up; use a complete Kohya LoRA file")
                target = by_name[stem]
                layer = self.lora_layer(target)
                down, up = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
                new_down, new_up = parts[".lora_down.weight"], parts[".lora_up.weight"]
                if tuple(new_down.shape) != tuple(down.shape) or tuple(new_up.shape) != tuple(up.shape):
                    raise TrainingError(
                        f"{source}: {stem} has shapes {tuple(new_down.shape)}/{tuple(new_up.shape)}, the network "
                        f"expects {tuple(down.shape)}/{tuple(up.shape)}; set network_dim/conv_dim to the file's rank"
                    )
                down.copy_(new_down.to(down.dtype))
                up.copy_(new_up.to(up.dtype))
                rank = self.ranks[stem]
                alpha = float(parts[".alpha"]) if ".alpha" in parts else float(rank)  # old files: alpha = rank
                self._set_alpha(target, alpha or float(rank))
                loaded += 1
        missing = tuple(sorted(set(by_name) - set(grouped)))
        return KohyaLoadReport(loaded=loaded, missing=missing, unexpected=tuple(unexpected))

    def _set_alpha(self, target: KohyaTarget, alpha: float) -> None:
        self.alphas[target.kohya_name] = alpha
        self.lora_layer(target).scaling[ADAPTER_NAME] = alpha / self.ranks[target.kohya_name]

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def train_mode(self) -> None:
        """Only the LoRA layers train (their dropout hooks read it); the frozen base stays in eval mode."""
        for target in self.targets:
            layer = self.lora_layer(target)
            layer.lora_A[ADAPTER_NAME].train()
            layer.lora_B[ADAPTER_NAME].train()

    def remove(self) -> dict[str, Any]:
        """Take the LoRA layers out again; returns the clean models per part (same objects, restored in place)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for layer in self._lean:
            del layer.forward  # the instance attribute goes; peft's class forward is back
        self._lean.clear()
        clean = {part: tuner.unload() for part, tuner in self._tuners.items()}
        self._tuners.clear()
        return clean


def attach_kohya_lora(
    unet: Any,
    text_encoder: Any,
    text_encoder_2: Any,
    *,
    network_dim: int | None = DEFAULT_NETWORK_DIM,
    network_alpha: float | None = DEFAULT_NETWORK_ALPHA,
    conv_dim: int | None = None,
    conv_alpha: float | None = None,
    dropout: float | None = None,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    seed: int | None = None,
    lora_dtype: Any = "float32",
    rank_dropout: float | None = None,
    module_dropout: float | None = None,
    block_ranks: BlockRanks | None = None,
    module_ranks: Mapping[str, tuple[int, float]] | None = None,
    target_classes: TargetClasses = KOHYA_CLASSES,
    lean_forward: bool = True,
) -> KohyaLoraNetwork:
    """Wrap Kohya's target layers with peft LoRA; freeze every base parameter; return the network.

    `conv_dim` turns on conv LoRA (`network_args conv_dim=`); `conv_alpha` defaults to 1 as in sd-scripts.
    `block_ranks` carries sd-scripts' block_dims/block_alphas/conv_block_dims/conv_block_alphas (`ranks.py`).
    `module_ranks` (kohya_name -> (rank, alpha), as read from a file by `from_weights.py`) overrides all of the
    above and limits the network to those modules.
    `target_classes` are the module classes searched for layers (Kohya's, or a LyCORIS preset's).
    `lean_forward` False keeps peft's general forward on every layer (the tests compare the two).
    `seed` makes the down-weight initialisation reproducible without touching the global RNG stream.
    `lora_dtype` is the dtype of the LoRA weights ("float32" as sd-scripts unless full_fp16/full_bf16; None keeps
    the base layers' dtype).
    """
    import torch

    dim = DEFAULT_NETWORK_DIM if network_dim is None else int(network_dim)
    if dim <= 0:
        raise ConfigError(f"network_dim: must be a positive integer, got {network_dim}")
    if conv_dim is not None and int(conv_dim) <= 0:
        raise ConfigError(f"network_args conv_dim: must be a positive integer, got {conv_dim}")
    for key, value in (
        ("network_dropout", dropout),
        ("network_args rank_dropout", rank_dropout),
        ("network_args module_dropout", module_dropout),
    ):
        if value is not None and not 0 <= float(value) < 1:
            raise ConfigError(f"{key}: must be in [0, 1), got {value}")
    if not (train_unet or train_text_encoder):
        raise ConfigError("network_train_unet_only and network_train_text_encoder_only: both set; choose one")
    alpha = kohya_alpha(network_alpha, dim)
    c_dim = None if conv_dim is None else int(conv_dim)
    c_alpha = None if c_dim is None else kohya_alpha(DEFAULT_CONV_ALPHA if conv_alpha is None else conv_alpha, c_dim)
    blocks = block_ranks or BlockRanks()

    models = {"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    for model in models.values():
        if model is not None:
            model.requires_grad_(False)
    all_targets = kohya_target_names(
        unet,
        text_encoder,
        text_encoder_2,
        conv=c_dim is not None or blocks.conv_dims is not None,
        train_unet=train_unet,
        train_text_encoder=train_text_encoder,
        classes=target_classes,
    )
    unet_blocks = UnetBlocks.from_config(unet.config) if unet is not None and train_unet else None
    plan = plan_ranks(
        all_targets, dim=dim, alpha=alpha, conv_dim=c_dim, conv_alpha=c_alpha, blocks=blocks, unet_blocks=unet_blocks
    )
    if module_ranks is not None:
        plan = {name: module_ranks.get(name, (0, 0.0)) for name in plan}
    targets, ranks, alphas = _keep_planned(all_targets, plan)
    network = KohyaLoraNetwork(targets=targets, models={}, alphas=alphas, ranks=ranks)
    rng_devices: list[Any] = []
    with torch.random.fork_rng(devices=rng_devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for part in PARTS:
            part_targets = targets.part(part)
            if not part_targets:
                continue
            network._tuners[part] = _inject(models[part], part_targets, dim, alpha, ranks, alphas)
            network.models[part] = models[part]
    if lora_dtype is not None:
        dtype = getattr(torch, lora_dtype) if isinstance(lora_dtype, str) else lora_dtype
        for param in network.lora_parameters():
            param.data = param.data.to(dtype)
    for param in network.lora_parameters():
        param.requires_grad_(True)
    dropouts = KohyaDropouts(float(dropout or 0), float(rank_dropout or 0), float(module_dropout or 0))
    if dropouts.active:
        network._hooks += [
            network.lora_layer(t).lora_A[ADAPTER_NAME].register_forward_hook(dropouts.hook) for t in network.targets
        ]
    elif lean_forward:  # the dropout hooks sit on lora_A's module call, which the lean forward skips
        network._lean = [layer for layer in map(network.lora_layer, network.targets) if _can_run_lean(layer, torch)]
        for layer in network._lean:
            layer.forward = MethodType(_lean_linear_forward, layer)
    return network


def _can_run_lean(layer: Any, torch: Any) -> bool:
    """A peft LoRA Linear with only our adapter, unmerged, no dropout and no variant (DoRA and the like)."""
    return (
        isinstance(layer.base_layer, torch.nn.Linear)
        and list(layer.active_adapters) == [ADAPTER_NAME]
        and not layer.merged
        and ADAPTER_NAME not in getattr(layer, "lora_variant", {})
        and isinstance(layer.lora_dropout[ADAPTER_NAME], torch.nn.Identity)
    )


def _lean_linear_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """peft's LoRA Linear forward for one active adapter, unmerged, without dropout: base(x) + up(down(x)) * scaling,
    the input cast to the LoRA dtype and the sum to the base output's dtype, as peft does."""
    from torch.nn.functional import linear

    result = self.base_layer(x, *args, **kwargs)
    down = self.lora_A[ADAPTER_NAME].weight
    lora_x = x if x.dtype == down.dtype else x.to(down.dtype)
    update = linear(linear(lora_x, down), self.lora_B[ADAPTER_NAME].weight) * self.scaling[ADAPTER_NAME]
    return (result + update).to(result.dtype)


def _keep_planned(
    targets: KohyaTargets, plan: Mapping[str, tuple[int, float]]
) -> tuple[KohyaTargets, dict[str, int], dict[str, float]]:
    """Drop modules planned with rank 0 (sd-scripts creates none); refuse a network left with nothing."""
    kept = KohyaTargets(**{part: tuple(t for t in targets.part(part) if plan[t.kohya_name][0] > 0) for part in PARTS})
    if not len(kept):
        raise ConfigError("network_args block_dims/conv_block_dims: every module has rank 0; nothing to train")
    return (
        kept,
        {t.kohya_name: plan[t.kohya_name][0] for t in kept},
        {t.kohya_name: plan[t.kohya_name][1] for t in kept},
    )


def _inject(
    model: Any,
    targets: Sequence[KohyaTarget],
    dim: int,
    alpha: float,
    ranks: Mapping[str, int],
    alphas: Mapping[str, float],
) -> Any:
    """Attach one peft adapter to `model` on exactly `targets`; return the tuner (kept for unload).

    Modules whose rank/alpha differ from network_dim/network_alpha (conv LoRA, block-wise dims) get peft
    `rank_pattern` / `alpha_pattern` entries.
    """
    import re

    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    # peft reads pattern keys as regular expressions matched at a dotted boundary: escape the exact names.
    rank_pattern = {re.escape(t.module_name): ranks[t.kohya_name] for t in targets if ranks[t.kohya_name] != dim}
    alpha_pattern = {re.escape(t.module_name): alphas[t.kohya_name] for t in targets if alphas[t.kohya_name] != alpha}
    config = LoraConfig(
        r=dim,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=[t.module_name for t in targets],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        init_lora_weights=True,  # Kaiming-uniform down, zero up: the same as sd-scripts
    )
    tuner = LoraModel(model, config, adapter_name=ADAPTER_NAME)
    wrapped = set(tuner.targeted_module_names)
    expected = {t.module_name for t in targets}
    if wrapped != expected:
        raise TrainingError(
            f"LoRA attach: peft wrapped {len(wrapped)} modules, Kohya's rule lists {len(expected)} "
            f"(e.g. {sorted(wrapped ^ expected)[:3]}); report this with your diffusers/peft versions"
        )
    return tuner


@dataclass(frozen=True)
class KohyaDropouts:
    """sd-scripts' three LoRA dropouts, applied to the down projection's output in training mode only."""

    neuron: float = 0.0  # network_dropout: single activations
    rank: float = 0.0  # rank_dropout: whole rank channels per sample
    module: float = 0.0  # module_dropout: the whole LoRA update

    @property
    def active(self) -> bool:
        return bool(self.neuron or self.rank or self.module)

    def hook(self, module: Any, _inputs: Any, output: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if not module.training:
            return output
        if self.module and torch.rand(1).item() < self.module:
            return output * 0  # sd-scripts calls the original forward only; the LoRA adds nothing
        if self.neuron:
            output = F.dropout(output, p=self.neuron)
        if self.rank:
            output = output * _rank_mask(output, self.rank) / (1.0 - self.rank)
        return output


def _rank_mask(output: Any, p: float) -> Any:
    """Keep-mask over (batch, rank), broadcast like sd-scripts: rank is dim 1 for convs, the last dim otherwise."""
    import torch

    is_conv = output.dim() == 4
    rank = output.shape[1] if is_conv else output.shape[-1]
    mask = (torch.rand(output.shape[0], rank, device=output.device) > p).to(output.dtype)
    if is_conv:
        return mask[:, :, None, None]
    return mask.view(output.shape[0], *([1] * (output.dim() - 2)), rank)


def kohya_alpha(alpha: float | None, dim: int) -> float:
    """sd-scripts: alpha None or 0 means alpha = dim."""
    return float(dim) if alpha is None or float(alpha) == 0 else float(alpha)


def part_parameter_groups(
    named: Mapping[str, Sequence[tuple[str, Any]]],
    unet_lr: float | None,
    text_encoder_lr: float | Sequence[float] | None,
    default_lr: float,
    loraplus_ratios: tuple[float | None, float | None],
) -> list[dict[str, Any]]:
    """sd-scripts' optimizer groups from each part's (name, parameter) pairs, for every network type.

    A part whose LR is 0 is frozen and left out; with a LoRA+ ratio (UNet, text encoders) the `lora_up` tensors of
    that part get their own `<part>_plus` group at LR x ratio.
    """
    te_lrs = _text_encoder_lrs(text_encoder_lr, default_lr)
    lrs = {"unet": default_lr if unet_lr is None else unet_lr, **dict(zip(TEXT_ENCODER_PARTS, te_lrs, strict=True))}
    unet_ratio, te_ratio = loraplus_ratios
    ratios = {"unet": unet_ratio, "text_encoder": te_ratio, "text_encoder_2": te_ratio}
    groups: list[dict[str, Any]] = []
    for part in PARTS:
        pairs = named.get(part, ())
        if not pairs:
            continue
        lr = float(lrs[part])
        if lr == 0:
            for _, param in pairs:
                param.requires_grad_(False)
            continue
        ratio = ratios[part]
        lifted = [p for name, p in pairs if ratio and "lora_up" in name]
        groups.append({"params": [p for name, p in pairs if not (ratio and "lora_up" in name)], "lr": lr, "name": part})
        if lifted:
            groups.append({"params": lifted, "lr": lr * float(ratio), "name": f"{part}_plus"})
    if not groups:
        raise ConfigError("unet_lr/text_encoder_lr: every trained part has learning rate 0; nothing to train")
    return groups


def _text_encoder_lrs(text_encoder_lr: float | Sequence[float] | None, default_lr: float) -> tuple[float, float]:
    if text_encoder_lr is None:
        return default_lr, default_lr
    if isinstance(text_encoder_lr, (int, float)):
        return float(text_encoder_lr), float(text_encoder_lr)
    values = [float(v) for v in text_encoder_lr]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ConfigError(f"text_encoder_lr: give one value or two (te1, te2), got {len(values)}")


def split_kohya_key(key: str) -> tuple[str, str | None]:
    for suffix in KOHYA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, None


def diffusers_style_aliases(targets: KohyaTargets) -> dict[str, str]:
    """`lora_unet_down_blocks_1_...` (diffusers' Kohya export) -> our SGM-named stem, so such files load too."""
    return {f"lora_unet_{t.module_name.replace('.', '_')}": t.kohya_name for t in targets.unet}
