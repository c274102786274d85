"""`network_module = "lycoris.kohya"` (LoCon, LoHa, LoKr, each optionally with DoRA) trained with LyCORIS itself.

Why the `lycoris-lora` package and not peft's LoHa/LoKr: LyCORIS is the implementation sd-scripts users train with,
so its module classes give exactly the tensors (`hada_w1_a`, `lokr_w1`, `lokr_w2_a`, `lora_mid`, `dora_scale`,
`alpha`, ...), shapes, factorisations, initialisation and forward maths that A1111, ComfyUI and LyCORIS's own loader
expect. peft's LoHa/LoKr follow LyCORIS closely but differ in details (file layout, DoRA support per type, LoKr's
full-matrix rule), and any difference would be a file other tools read differently.

What lorapipe adds: LyCORIS under sd-scripts sees SDXL's original (SGM) UNet, whose module paths
(`input_blocks.4.1...`) become the key names. We train the diffusers UNet, so LyCORIS runs with a preset restricted
to the module classes both UNets share (sd-scripts' SGM UNet has no `TimestepEmbedding` class and no `conv_in`,
`conv_out`, `time_embedding` names, so LyCORIS trains none of those there either; its `CrossAttention` is diffusers'
`Attention`), and every module is renamed to its Kohya SGM name (`lora/targets.py`) before it is registered. The
file then holds the keys LyCORIS writes under sd-scripts for SDXL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lorapipe.errors import ConfigError, TrainingError
from lorapipe.lora.network import KohyaLoadReport, kohya_alpha, part_parameter_groups
from lorapipe.lora.targets import KOHYA_PREFIXES, PARTS, TargetClasses, kohya_target_names

# Module classes of LyCORIS's presets that sd-scripts' SGM UNet (library/sdxl_original_unet.py) lacks, so LyCORIS
# selects nothing by them there (see the module docstring).
_SGM_FOREIGN_CLASSES = ("TimestepEmbedding",)
# sd-scripts' SGM UNet class names that diffusers' UNet calls otherwise: its attention (attn1/attn2, holding to_q,
# to_k, to_v, to_out.0 in both) is `CrossAttention` there, `Attention` here; `preset=attn-only` selects by it.
_SGM_TO_DIFFUSERS_CLASSES = {"CrossAttention": "Attention"}
# LyCORIS options that change a LoCon module's tensors or maths. With none of them, LoCon on a Linear or Conv2d layer
# is Kohya's LoRA module (lora_down, lora_up, alpha; down kaiming-uniform, up zero; x + up(down(x)) * alpha / rank),
# which peft's LoRA layers compute faster (`plain_lora`). use_tucker only changes 3x3 convs.
_LOCON_EXTRAS = ("dropout", "rank_dropout", "module_dropout", "use_scalar", "dora_wd", "rs_lora", "bypass_mode")
# The class attributes LycorisNetworkKohya.apply_preset sets.
_PRESET_ATTRIBUTES = (
    "ENABLE_CONV",
    "UNET_TARGET_REPLACE_MODULE",
    "UNET_TARGET_REPLACE_NAME",
    "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    "TEXT_ENCODER_TARGET_REPLACE_NAME",
    "MODULE_ALGO_MAP",
    "NAME_ALGO_MAP",
    "USE_FNMATCH",
    "TARGET_EXCLUDE_NAME",
)


@dataclass
class LycorisKohyaNetwork:
    """LyCORIS modules attached to the SDXL parts, named as sd-scripts + LyCORIS name them."""

    network: Any  # lycoris.kohya.LycorisNetworkKohya (a torch Module holding every LyCORIS module)
    modules: dict[str, list[Any]]  # part -> LyCORIS modules of that part

    @property
    def num_modules(self) -> dict[str, int]:
        return {part: len(mods) for part, mods in self.modules.items()}

    def lora_parameters(self, part: str | None = None) -> list[Any]:
        parts = PARTS if part is None else (part,)
        return [p for name in parts for module in self.modules.get(name, []) for p in module.parameters()]

    def parameter_groups(
        self,
        unet_lr: float | None,
        text_encoder_lr: float | Sequence[float] | None,
        default_lr: float,
        *,
        loraplus_unet_lr_ratio: float | None = None,
        loraplus_text_encoder_lr_ratio: float | None = None,
    ) -> list[dict[str, Any]]:
        """sd-scripts' groups (one per part, LR 0 freezes a part); LoRA+ lifts `lora_up` tensors as LyCORIS does."""
        named = {
            part: [(name, p) for module in modules for name, p in module.named_parameters()]
            for part, modules in self.modules.items()
        }
        return part_parameter_groups(
            named, unet_lr, text_encoder_lr, default_lr, (loraplus_unet_lr_ratio, loraplus_text_encoder_lr_ratio)
        )

    def kohya_state_dict(self, dtype: Any = None) -> dict[str, Any]:
        """LyCORIS's own state dict (Kohya SGM names), on CPU in `dtype` (None keeps the training dtype)."""
        state = {}
        for key, tensor in self.network.state_dict().items():
            tensor = tensor.detach()
            state[key] = tensor.to("cpu", dtype or tensor.dtype).contiguous()
        return state

    def kohya_shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: tuple(tensor.shape) for key, tensor in self.network.state_dict().items()}

    def load_kohya_state_dict(
        self, state_dict: Mapping[str, Any], *, source: str = "network_weights"
    ) -> KohyaLoadReport:
        """Fill the modules from a LyCORIS file of the same algorithm and ranks (a resume or network_weights)."""
        own = self.kohya_shapes()
        for key, tensor in state_dict.items():
            if key in own and tuple(tensor.shape) != own[key]:
                raise TrainingError(
                    f"{source}: {key} has shape {tuple(tensor.shape)}, the network expects "
                    f"{own[key]}; use the algo, network_dim, conv_dim and factor the file was "
                    f"trained with"
                )
        result = self.network.load_state_dict(dict(state_dict), strict=False)
        stems = {key.split(".")[0] for key in own}
        missing_stems = {key.split(".")[0] for key in result.missing_keys}
        return KohyaLoadReport(
            loaded=len(stems - missing_stems),
            missing=tuple(sorted(missing_stems)),
            unexpected=tuple(result.unexpected_keys),
        )

    def train_mode(self) -> None:
        """Dropouts (rank/module/neuron) read the LyCORIS modules' own training flag."""
        self.network.train()

    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """sd-scripts' scale_weight_norms through LyCORIS's own per-module max-norm: (scaled, mean, max)."""
        import torch

        with torch.no_grad():
            scaled, mean, biggest = self.network.apply_max_norm_regularization(max_norm, None)
        return int(scaled), float(mean), float(biggest)

    def remove(self) -> None:
        """Give every wrapped layer its own forward back."""
        for modules in self.modules.values():
            for module in modules:
                module.restore()
        self.modules = {}


@dataclass(frozen=True)
class PlainLora:
    """A lycoris.kohya network that is plain LoRA: the layers it wraps and their conv rank (None: no 3x3 convs)."""

    classes: TargetClasses
    conv_dim: int | None
    conv_alpha: float | None


def plain_lora(options: Any, *, network_dim: int, network_alpha: float | None) -> PlainLora | None:
    """The plain-LoRA layout of `options` (a `LycorisOptions`), or None when LyCORIS's own modules are needed (or
    the network is not lycoris.kohya: `options` None).

    `algo=lora`/`locon` without LyCORIS's extras writes the same keys, shapes and update as Kohya's LoRA modules on
    the preset's layers, so it trains through the peft path (`attach_kohya_lora` with these classes); the tests
    check both the file layout and the forward maths against LyCORIS's modules."""
    if options is None or options.algo != "locon" or any(getattr(options, name) for name in _LOCON_EXTRAS):
        return None
    preset = _sdxl_preset_values(options.preset)
    conv = bool(preset["enable_conv"])
    if conv and options.use_tucker:
        return None
    alpha = kohya_alpha(network_alpha, network_dim)
    classes = TargetClasses(
        unet=tuple(preset["unet_target_module"]),
        unet_conv=(),
        text_encoder=tuple(preset["text_encoder_target_module"]),
    )
    if not conv:
        return PlainLora(classes, None, None)
    return PlainLora(classes, int(options.conv_dim or network_dim), float(options.conv_alpha or alpha))


def attach_lycoris(
    unet: Any,
    text_encoder: Any,
    text_encoder_2: Any,
    options: Any,
    *,
    network_dim: int,
    network_alpha: float | None,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    seed: int | None = None,
    lora_dtype: Any = "float32",
) -> LycorisKohyaNetwork:
    """Build LyCORIS's network for `options` (a `LycorisOptions`) on the parts being trained; freeze the base."""
    import torch

    if not (train_unet or train_text_encoder):
        raise ConfigError("network_train_unet_only and network_train_text_encoder_only: both set; choose one")
    for model in (unet, text_encoder, text_encoder_2):
        if model is not None:
            model.requires_grad_(False)
    alpha = kohya_alpha(network_alpha, network_dim)
    with torch.random.fork_rng(devices=[], enabled=seed is not None), _sdxl_preset(options.preset) as network_class:
        if seed is not None:
            torch.manual_seed(seed)
        network = network_class(
            [text_encoder, text_encoder_2],
            unet,
            multiplier=1.0,
            lora_dim=int(network_dim),
            conv_lora_dim=int(options.conv_dim or network_dim),  # LyCORIS: conv_dim 0/None -> network_dim
            alpha=alpha,
            conv_alpha=float(options.conv_alpha or alpha),
            dropout=options.dropout,
            rank_dropout=options.rank_dropout,
            module_dropout=options.module_dropout,
            use_tucker=options.use_tucker,
            use_scalar=options.use_scalar,
            network_module=options.algo,
            decompose_both=options.decompose_both,
            factor=options.factor,
            weight_decompose=options.dora_wd,
            wd_on_out=options.wd_on_output,
            rank_dropout_scale=options.rank_dropout_scale,
            bypass_mode=options.bypass_mode,
            full_matrix=options.full_matrix,
            rs_lora=options.rs_lora,
            unbalanced_factorization=options.unbalanced_factorization,
            warn_on_unmatched=False,
        )
    modules = _rename_to_sgm(network, unet, text_encoder, text_encoder_2)
    if not train_unet:
        modules["unet"] = []
    if not train_text_encoder:
        modules["text_encoder"] = modules["text_encoder_2"] = []
    network.apply_to([text_encoder, text_encoder_2], unet, apply_text_encoder=train_text_encoder, apply_unet=train_unet)
    if lora_dtype is not None:
        dtype = getattr(torch, lora_dtype) if isinstance(lora_dtype, str) else lora_dtype
        network.to(dtype)
    device = next((p.device for p in unet.parameters()), None) if unet is not None else None
    if device is not None:
        network.to(device)
    network.requires_grad_(True)
    return LycorisKohyaNetwork(network=network, modules=modules)


@contextmanager
def _sdxl_preset(preset_name: str) -> Iterator[type]:
    """LyCORIS's network class with `preset_name` minus what sd-scripts' SGM UNet does not have, for one build.

    LyCORIS keeps the preset in class attributes of LycorisNetworkKohya and reads them by that class name (as
    sd-scripts' create_network sets them); they are restored afterwards so no state outlives the build.
    """
    from lycoris.kohya import LycorisNetworkKohya

    preset = _sdxl_preset_values(preset_name)
    saved = {name: getattr(LycorisNetworkKohya, name) for name in _PRESET_ATTRIBUTES}
    LycorisNetworkKohya.apply_preset(preset)
    try:
        yield LycorisNetworkKohya
    finally:
        for name, value in saved.items():
            setattr(LycorisNetworkKohya, name, value)


def _sdxl_preset_values(preset_name: str) -> dict[str, Any]:
    """LyCORIS's preset minus the classes and names sd-scripts' SGM UNet does not have, in diffusers' class names."""
    from lycoris.config import PRESET

    preset = dict(PRESET[preset_name])
    preset["unet_target_module"] = [
        _SGM_TO_DIFFUSERS_CLASSES.get(name, name)
        for name in preset.get("unet_target_module", [])
        if name not in _SGM_FOREIGN_CLASSES
    ]
    preset["unet_target_name"] = []
    return preset


def _rename_to_sgm(network: Any, unet: Any, te1: Any, te2: Any) -> dict[str, list[Any]]:
    """LyCORIS names modules after the diffusers paths; give each its Kohya SGM name (what sd-scripts writes)."""
    targets = kohya_target_names(unet, te1, te2, conv=True)
    # LyCORIS: prefix + the module's path in the model we hand it. The SGM UNet paths differ from diffusers'; the
    # CLIP paths differ by transformers 5 dropping the `text_model.` level that sd-scripts' (transformers 4) has.
    names = {
        f"{KOHYA_PREFIXES[part]}_{t.module_name.replace('.', '_')}": t.kohya_name
        for part in PARTS
        for t in targets.part(part)
    }
    modules: dict[str, list[Any]] = {part: [] for part in PARTS}
    unknown = []
    for module in network.text_encoder_loras + network.unet_loras:
        sgm = names.get(module.lora_name)
        if sgm is None:
            unknown.append(module.lora_name)
            continue
        module.lora_name = sgm
        part = next(part for part, prefix in KOHYA_PREFIXES.items() if sgm.startswith(prefix + "_"))
        modules[part].append(module)
    if unknown:
        raise TrainingError(
            f"LyCORIS wrapped {len(unknown)} modules that have no Kohya SGM name (e.g. "
            f"{unknown[:3]}); report this with your diffusers/lycoris-lora versions"
        )
    return modules
