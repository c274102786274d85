"""`network_args` for `network_module = "lycoris.kohya"`, read as LyCORIS's `create_network` reads them.

sd-scripts users write them as `network_args = ["algo=loha", "conv_dim=8", "use_tucker=True", ...]`; the kohya_ss
GUI writes the same list from its LyCORIS fields (`config/gui.py`). Each argument lorapipe trains with is validated
here, with LyCORIS's defaults; arguments that would train something lorapipe cannot save in Kohya's SGM names, or
algorithms it does not train, are errors naming the argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lorapipe.config.model import LycorisOptions
from lorapipe.config.network_args import split_pairs
from lorapipe.config.values import ValueProblem

# algo -> LyCORIS's name; "lora" is LyCORIS's alias of "locon".
LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr"}
LYCORIS_ALGOS_NOT_TRAINED = ("ia3", "dylora", "glora", "full", "diag-oft", "boft", "tlora")
LYCORIS_PRESETS = ("full", "full-lin", "attn-mlp", "attn-only", "unet-transformer-only", "unet-convblock-only")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", "none", ""}
_FLAGS = (
    "use_tucker",
    "use_scalar",
    "decompose_both",
    "dora_wd",
    "wd_on_output",
    "rank_dropout_scale",
    "bypass_mode",
    "full_matrix",
    "unbalanced_factorization",
    "rs_lora",
)
# LyCORIS's older spellings of use_tucker.
_TUCKER_ALIASES = ("use_cp", "use_conv_cp")
_PROBABILITIES = ("dropout", "rank_dropout", "module_dropout")
_LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")


@dataclass(frozen=True)
class LycorisArgs:
    """The parsed options (None when there were errors) and the problems found."""

    options: LycorisOptions | None
    errors: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())


def parse_lycoris_args(items: Sequence[str]) -> LycorisArgs:
    """Validate lycoris.kohya network_args; the last value of a repeated key wins (as in sd-scripts' dict)."""
    try:
        pairs = dict(split_pairs(items))
    except ValueProblem as problem:
        return LycorisArgs(None, (str(problem),))
    errors: list[str] = []
    warnings: list[str] = []
    algo_text = pairs.pop("algo", "lora").strip().strip("\"'").lower() or "lora"
    algo = LYCORIS_ALGOS.get(algo_text)
    if algo is None:
        trained = ", ".join(sorted(LYCORIS_ALGOS))
        why = (
            "is a LyCORIS algorithm lorapipe does not train"
            if algo_text in LYCORIS_ALGOS_NOT_TRAINED
            else "is not a LyCORIS algorithm"
        )
        errors.append(f"algo={algo_text} {why}; use one of {trained}")
    preset = pairs.pop("preset", "full").strip() or "full"
    if preset not in LYCORIS_PRESETS:
        errors.append(
            f"preset={preset}: lorapipe trains LyCORIS's built-in presets ({', '.join(LYCORIS_PRESETS)}); "
            f"a preset file is not supported"
        )
    flags: dict[str, bool] = {}
    numbers: dict[str, float] = {}
    for key, value in pairs.items():
        name = "use_tucker" if key in _TUCKER_ALIASES else key
        if name in _FLAGS:
            flag = _flag(value)
            if flag is None:
                errors.append(f"{key}={value!r} must be True or False")
            else:
                flags[name] = flags.get(name, False) or flag
        elif name in ("conv_dim", "conv_alpha", "factor", *_PROBABILITIES, *_LORAPLUS):
            number = _number(value)
            if number is None:
                errors.append(f"{key}={value!r} is not a number")
            elif name in _PROBABILITIES and not 0 <= number < 1:
                errors.append(f"{key}={value} must be at least 0 and below 1 (a dropout probability)")
            elif name == "conv_dim" and (number < 0 or number != int(number)):
                errors.append(f"{key}={value} must be a whole number of 0 or more")
            elif name == "factor" and number != int(number):
                errors.append(f"{key}={value} must be a whole number (-1 lets LyCORIS choose)")
            else:
                numbers[name] = number
        elif name == "train_norm":
            if _flag(value):
                errors.append(
                    "train_norm=True: normalisation layers have no Kohya SGM name lorapipe can save; remove it"
                )
        else:
            warnings.append(f"{key}={value}: LyCORIS does not use this argument for SDXL; ignored")
    if errors:
        return LycorisArgs(None, tuple(errors), tuple(warnings))
    ratio = numbers.get("loraplus_lr_ratio")
    options = LycorisOptions(
        algo=algo or "locon",
        preset=preset,
        conv_dim=None if "conv_dim" not in numbers else int(numbers["conv_dim"]),
        conv_alpha=numbers.get("conv_alpha"),
        dropout=numbers.get("dropout", 0.0),
        rank_dropout=numbers.get("rank_dropout", 0.0),
        module_dropout=numbers.get("module_dropout", 0.0),
        factor=int(numbers.get("factor", -1)),
        use_tucker=flags.get("use_tucker", False),
        use_scalar=flags.get("use_scalar", False),
        decompose_both=flags.get("decompose_both", False),
        dora_wd=flags.get("dora_wd", False),
        wd_on_output=flags.get("wd_on_output", True),
        rank_dropout_scale=flags.get("rank_dropout_scale", False),
        bypass_mode=flags.get("bypass_mode", False),
        full_matrix=flags.get("full_matrix", False),
        unbalanced_factorization=flags.get("unbalanced_factorization", False),
        rs_lora=flags.get("rs_lora", False),
        loraplus_unet_lr_ratio=numbers.get("loraplus_unet_lr_ratio", ratio),
        loraplus_text_encoder_lr_ratio=numbers.get("loraplus_text_encoder_lr_ratio", ratio),
    )
    return LycorisArgs(options, (), tuple(warnings))


def _flag(value: str) -> bool | None:
    text = value.strip().strip("\"'").lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def _number(value: str) -> float | None:
    try:
        return float(value.strip().strip("\"'"))
    except ValueError:
        return None
