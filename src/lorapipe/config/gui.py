"""kohya_ss GUI files read the way the GUI itself turns them into an sd-scripts run (kohya_gui/lora_gui.py).

The GUI saves every field of its form, including those that do not apply to the chosen `LoRA_type`, and `""` for
"not set". When it starts sd-scripts it:
- drops every `""` (and false/None) value, so `seed = ""` or `max_train_epochs = ""` simply means "not given" (for
  numbers this holds in any file, since `""` cannot be a number; other keys only in GUI files, which carry
  `LoRA_type`, so a hand-written `output_name = ""` is still an error);
- derives `network_module` and `network_args` from `LoRA_type`, using only the fields that type has;
- computes `max_train_steps` from `epoch` when `max_train_steps` is 0, and the warm-up from the `lr_warmup` percent;
- passes `lr_scheduler_num_cycles = epoch` when that field is empty.
`apply_gui_rules` does the same before the key table classifies anything, so a GUI file runs as it would in the GUI
and every field it leaves out is named once in a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorapipe.config.model import FLOAT, FLOAT_OR_LIST, INT, NUMBER, kohya_fields
from lorapipe.config.values import is_off
from lorapipe.dataset.options import DATASET_DEFAULTS, SUBSET_DEFAULTS

LORA_MODULE = "networks.lora"
LYCORIS_MODULE = "lycoris.kohya"

# Block-wise and dropout fields the GUI writes into network_args for networks.lora (when set).
_KOHYA_FIELDS = (
    "down_lr_weight",
    "mid_lr_weight",
    "up_lr_weight",
    "block_lr_zero_threshold",
    "block_dims",
    "block_alphas",
    "conv_block_dims",
    "conv_block_alphas",
    "rank_dropout",
    "module_dropout",
)
# Fields the GUI writes into network_args for every lycoris.kohya type (always, even at their defaults).
_LYCORIS_FIELDS = (
    "LyCORIS_preset",
    "conv_dim",
    "conv_alpha",
    "use_tucker",
    "rank_dropout",
    "bypass_mode",
    "dora_wd",
    "module_dropout",
    "use_scalar",
    "rank_dropout_scale",
    "train_norm",
)
_LOKR_FIELDS = ("factor", "use_cp", "decompose_both")
# LoRA+ ratios join network_args (when set) for every type.
LORAPLUS_FIELDS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
# GUI network fields of types lorapipe does not train (DyLoRA's unit, iA3's train_on_input, Diag-OFT's options).
_OTHER_TYPE_FIELDS = ("unit", "train_on_input", "constrain", "rescaled")
# Older GUI versions saved conv_block_dims/conv_block_alphas under these names (renamed in kohya_ss in July 2023).
RENAMED_FIELDS = {"conv_dims": "conv_block_dims", "conv_alphas": "conv_block_alphas"}
# The GUI's field name -> the network_args name it writes.
_ARG_NAMES = {"LyCORIS_preset": "preset"}


@dataclass(frozen=True)
class GuiLoraType:
    """What one LoRA_type value becomes: the network module, LyCORIS's `algo`, the fields it turns into args."""

    network_module: str
    algo: str | None
    fields: tuple[str, ...]
    always: bool  # True: every field is written (lycoris types); False: only fields that are set (networks.lora)


LORA_TYPES: dict[str, GuiLoraType] = {
    "Standard": GuiLoraType(LORA_MODULE, None, _KOHYA_FIELDS, always=False),
    "Kohya LoCon": GuiLoraType(LORA_MODULE, None, ("conv_dim", "conv_alpha") + _KOHYA_FIELDS, always=False),
    "LoCon": GuiLoraType(LYCORIS_MODULE, "locon", _LYCORIS_FIELDS, always=True),
    "LyCORIS/LoCon": GuiLoraType(LYCORIS_MODULE, "locon", _LYCORIS_FIELDS, always=True),
    "LyCORIS/LoHa": GuiLoraType(LYCORIS_MODULE, "loha", _LYCORIS_FIELDS, always=True),
    "LyCORIS/LoKr": GuiLoraType(LYCORIS_MODULE, "lokr", _LYCORIS_FIELDS + _LOKR_FIELDS, always=True),
}
# Every GUI field that only ever reaches sd-scripts through network_args.
GUI_NETWORK_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        _KOHYA_FIELDS
        + ("conv_dim", "conv_alpha")
        + _LYCORIS_FIELDS
        + _LOKR_FIELDS
        + LORAPLUS_FIELDS
        + _OTHER_TYPE_FIELDS
    )
)


@dataclass
class GuiResult:
    """The values as sd-scripts would receive them, plus what was changed or left out (one line each)."""

    values: dict[str, Any]
    origins: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def is_gui_file(values: Mapping[str, Any]) -> bool:
    """A file the kohya_ss GUI saved: it always writes LoRA_type (and `epoch`)."""
    return "LoRA_type" in values


def apply_gui_rules(values: Mapping[str, Any], origins: Mapping[str, str], source: str) -> GuiResult:
    """GUI semantics for `values` (key -> raw value): "" unset, LoRA_type -> network_module/network_args."""
    where = lambda key: origins.get(key, source)  # noqa: E731
    gui = is_gui_file(values)
    kept = {key: value for key, value in values.items() if not (_unset(value) and (gui or key in _NUMBER_KEYS))}
    result = GuiResult(kept, dict(origins))
    for old, new in RENAMED_FIELDS.items():
        if old in result.values:
            value = result.values.pop(old)
            if new in result.values:
                result.warnings.append(f"{where(old)}: {old} ignored: the file also sets {new}")
            elif not is_off(value):
                result.values[new] = value
                result.origins[new] = where(old)
                result.warnings.append(f"{where(old)}: {old}: older kohya_ss GUI name; read as {new}")
    if gui:
        _gui_lengths(values, result, where)
    _network_fields(result, where)
    return result


def _number_keys() -> frozenset[str]:
    numeric = (INT, FLOAT, NUMBER, FLOAT_OR_LIST)
    keys = {name for name, item in kohya_fields().items() if item.metadata["kind"] in numeric}
    keys |= {
        name
        for name, default in {**SUBSET_DEFAULTS, **DATASET_DEFAULTS}.items()
        if isinstance(default, (int, float)) and not isinstance(default, bool)
    }
    return frozenset(keys | set(GUI_NETWORK_FIELDS) | {"epoch", "lr_warmup", "validation_seed"})


_NUMBER_KEYS = _number_keys()


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _gui_lengths(raw: Mapping[str, Any], result: GuiResult, where) -> None:
    """`epoch` and the `lr_warmup` percent, as the GUI turns them into sd-scripts options."""
    values = result.values
    epoch = values.pop("epoch", None)
    steps_given = not is_off(values.get("max_train_steps"))
    if epoch is not None and not steps_given and is_off(values.get("max_train_epochs")):
        values["max_train_epochs"] = epoch
        result.origins["max_train_epochs"] = where("epoch")
        result.warnings.append(
            f"{where('epoch')}: epoch = {epoch}: max_train_steps is not set, so the kohya_ss GUI "
            f"trains {epoch} epochs; read as max_train_epochs = {epoch}"
        )
    elif epoch is not None:
        result.warnings.append(f"{where('epoch')}: epoch ignored: max_train_steps/max_train_epochs set the length")
    if _unset(raw.get("lr_scheduler_num_cycles")) and "lr_scheduler_num_cycles" in raw and epoch is not None:
        values["lr_scheduler_num_cycles"] = epoch  # the GUI's fallback for an empty field
    warmup = values.pop("lr_warmup", None)
    if not is_off(warmup) and is_off(values.get("lr_warmup_steps")):
        fraction = float(warmup) / 100
        values["lr_warmup_steps"] = fraction
        result.origins["lr_warmup_steps"] = where("lr_warmup")
        result.warnings.append(
            f"{where('lr_warmup')}: lr_warmup = {warmup} (percent of all steps, a kohya_ss GUI "
            f"field); read as lr_warmup_steps = {fraction}"
        )


def _network_fields(result: GuiResult, where) -> None:
    """LoRA_type -> network_module; the type's fields -> network_args; the other GUI network fields named once."""
    values = result.values
    lora_type = values.pop("LoRA_type", None)
    present = [name for name in GUI_NETWORK_FIELDS if name in values]
    if lora_type is None:
        kind = LORA_TYPES["Standard"]  # the GUI's default type
    elif lora_type in LORA_TYPES:
        kind = LORA_TYPES[lora_type]
    else:
        result.errors.append(
            f"{where('LoRA_type')}: LoRA_type = {lora_type!r} trains a network lorapipe does not; use one of "
            f"{', '.join(repr(name) for name in LORA_TYPES)}"
        )
        for name in present:
            values.pop(name)
        return
    if lora_type is not None:
        module = values.get("network_module")
        if module is not None and str(module).strip() != kind.network_module:
            result.errors.append(
                f"{where('network_module')}: network_module = {module!r} contradicts LoRA_type = "
                f"{lora_type!r} ({kind.network_module}); keep only one of them"
            )
            return
        values["network_module"] = kind.network_module
        result.origins.setdefault("network_module", where("LoRA_type"))
    used = kind.fields + LORAPLUS_FIELDS
    args = _listed(values.get("network_args"))
    written = {str(item).partition("=")[0].strip() for item in args}
    added, ignored = [], []
    for name in present:
        value = values.pop(name)
        arg = _ARG_NAMES.get(name, name)
        if name not in used:
            if lora_type is not None or not is_off(value):
                ignored.append(name)
            continue
        if name == "conv_dim" and not kind.always and is_off(value):
            continue  # Kohya LoCon with conv_dim 0 adds no conv LoRA
        if arg in written:
            if not is_off(value):
                result.warnings.append(f"{where(name)}: {name} ignored: network_args already sets {arg}")
            continue
        if not kind.always and is_off(value):
            continue
        if name == "conv_alpha" and not kind.always and "conv_dim" not in {a.partition("=")[0] for a in added}:
            continue
        text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        added.append(f"{arg}={text}")
    if kind.algo is not None and "algo" not in written:
        added.insert(0, f"algo={kind.algo}")
    if added:
        values["network_args"] = args + added
        result.origins.setdefault("network_args", where(lora_type and "LoRA_type" or present[0]))
        label = f"LoRA_type = {lora_type!r}" if lora_type is not None else "kohya_ss GUI fields"
        result.warnings.append(
            f"{where('LoRA_type' if lora_type else present[0])}: {label}: read as "
            f"network_module = {kind.network_module!r}, network_args += {added}, as the GUI "
            f"does"
        )
    if ignored:
        label = f"LoRA_type {lora_type!r}" if lora_type is not None else "networks.lora (no LoRA_type)"
        result.warnings.append(
            f"{where(ignored[0])}: {', '.join(ignored)} ignored: the kohya_ss GUI does not use them for {label}"
        )


def _listed(value: Any) -> list[Any]:
    """network_args as a list, whether the file holds a list or one space-separated string."""
    if not value:
        return []
    return value.split() if isinstance(value, str) else list(value)
