"""Kohya's `optimizer_type` / `optimizer_args` -> a torch optimizer (sd-scripts `get_optimizer` semantics).

Optional packages (bitsandbytes, lion-pytorch, prodigyopt, dadaptation) are imported only when asked for; when one
is missing or cannot run here the error names the key, the value and the package to install.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lorapipe.errors import ConfigError

# Case-insensitive Kohya names -> (module, class, pip package).
_BNB = "bitsandbytes"
_REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "adamw": ("torch.optim", "AdamW", None),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", _BNB),
    "pagedadamw8bit": ("bitsandbytes.optim", "PagedAdamW8bit", _BNB),
    "pagedadamw": ("bitsandbytes.optim", "PagedAdamW", _BNB),
    "pagedadamw32bit": ("bitsandbytes.optim", "PagedAdamW32bit", _BNB),
    "lion8bit": ("bitsandbytes.optim", "Lion8bit", _BNB),
    "pagedlion8bit": ("bitsandbytes.optim", "PagedLion8bit", _BNB),
    "sgdnesterov8bit": ("bitsandbytes.optim", "SGD8bit", _BNB),
    "lion": ("lion_pytorch", "Lion", "lion-pytorch"),
    "sgdnesterov": ("torch.optim", "SGD", None),
    "adafactor": ("transformers.optimization", "Adafactor", None),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
    "dadaptation": ("dadaptation", "DAdaptAdam", "dadaptation"),
    "dadaptadam": ("dadaptation", "DAdaptAdam", "dadaptation"),
    "dadaptadagrad": ("dadaptation", "DAdaptAdaGrad", "dadaptation"),
    "dadaptadan": ("dadaptation", "DAdaptAdan", "dadaptation"),
    "dadaptadanip": ("dadaptation.experimental", "DAdaptAdanIP", "dadaptation"),
    "dadaptadampreprint": ("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation"),
    "dadaptlion": ("dadaptation", "DAdaptLion", "dadaptation"),
    "dadaptsgd": ("dadaptation", "DAdaptSGD", "dadaptation"),
}
KNOWN_NAMES = (
    "AdamW, AdamW8bit, PagedAdamW8bit, PagedAdamW, Lion, Lion8bit, PagedLion8bit, SGDNesterov, "
    "SGDNesterov8bit, Adafactor, Prodigy, DAdaptation, DAdaptAdam, DAdaptAdaGrad, DAdaptAdan, DAdaptLion, "
    "DAdaptSGD"
)


@dataclass(frozen=True)
class OptimizerChoice:
    """What was built, for metadata (`ss_optimizer`) and for scheduler decisions."""

    name: str  # canonical Kohya name as given (AdamW when empty)
    class_path: str  # e.g. torch.optim.adamw.AdamW
    kwargs: dict[str, Any]
    adafactor_relative_step: bool = False

    def metadata_string(self) -> str:
        """`ss_optimizer` as sd-scripts writes it: class path plus `(k=v,...)` when args were given."""
        if not self.kwargs:
            return self.class_path
        return self.class_path + "(" + ",".join(f"{k}={v}" for k, v in self.kwargs.items()) + ")"


def parse_optimizer_args(args: Sequence[str] | str | None) -> dict[str, Any]:
    """`["weight_decay=0.01", "betas=0.9,0.99"]` -> {"weight_decay": 0.01, "betas": (0.9, 0.99)} (Python literals)."""
    if not args:
        return {}
    if isinstance(args, str):
        args = args.split()
    kwargs: dict[str, Any] = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f'optimizer_args: {arg!r} is not key=value; write e.g. "weight_decay=0.01"')
        key, raw = arg.split("=", 1)
        key, raw = key.strip(), raw.strip()
        values = [_literal(key, part) for part in raw.split(",")]
        kwargs[key] = values[0] if len(values) == 1 else tuple(values)
    return kwargs


def _literal(key: str, text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text in ("true", "false"):  # TOML-style booleans that users type by habit
            return text == "true"
        return text  # sd-scripts keeps such values as strings (e.g. "d_coef" names)


def _resolve_class(optimizer_type: str):
    key = (optimizer_type or "AdamW").lower()
    if key in _REGISTRY:
        module_name, class_name, package = _REGISTRY[key]
    elif "." in optimizer_type:  # any importable "module.Class", as sd-scripts allows
        module_name, class_name = optimizer_type.rsplit(".", 1)
        package = module_name.split(".")[0]
    else:
        raise ConfigError(
            f"optimizer_type: {optimizer_type!r} is unknown; use one of {KNOWN_NAMES} or a module.Class path"
        )
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except ImportError as exc:
        hint = f"pip install {package}" if package else "check the installation"
        raise ConfigError(
            f"optimizer_type: {optimizer_type!r} needs the {package or module_name} package "
            f"which cannot be imported here ({exc.__class__.__name__}: {exc}); {hint} "
            "or choose AdamW/Adafactor/SGDNesterov"
        ) from exc
    except AttributeError as exc:
        raise ConfigError(f"optimizer_type: {module_name} has no {class_name}") from exc
    return cls


def build_optimizer(
    optimizer_type: str | None,
    optimizer_args,
    param_groups: list[dict],
    learning_rate: float,
    *,
    device_type: str = "cpu",
):
    """Build the optimizer for `param_groups` (dicts with params and lr); returns (optimizer, OptimizerChoice)."""
    name = optimizer_type or "AdamW"
    key = name.lower()
    kwargs = parse_optimizer_args(optimizer_args)
    if _REGISTRY.get(key, ("", "", None))[2] == _BNB and device_type != "cuda":
        raise ConfigError(
            f"optimizer_type: {name} (bitsandbytes) needs a CUDA GPU; this run is on "
            f"{device_type}; use AdamW or Adafactor here"
        )
    cls = _resolve_class(name)
    call_kwargs = dict(kwargs)
    relative_step = False
    lr: float | None = learning_rate
    if key == "adamw" and device_type in ("cpu", "cuda") and not {"foreach", "fused"} & call_kwargs.keys():
        # LoRA has hundreds of small tensors: the fused kernel steps them all in one call (same math; on a CPU
        # 3-4x faster than the multi-tensor path, which is itself ~2x faster than one tensor at a time).
        call_kwargs["fused"] = True
    elif key in ("adamw", "sgdnesterov") and not {"foreach", "fused"} & call_kwargs.keys():
        call_kwargs["foreach"] = True  # the multi-tensor kernels step the small tensors together (same math)
    if key == "sgdnesterov":
        call_kwargs.setdefault("momentum", 0.9)
        call_kwargs["nesterov"] = True
    elif key == "adafactor":
        call_kwargs.setdefault("relative_step", True)
        if not call_kwargs["relative_step"] and call_kwargs.get("warmup_init", False):
            call_kwargs["relative_step"] = True  # sd-scripts: warmup_init implies relative_step
        relative_step = bool(call_kwargs["relative_step"])
        if relative_step:
            # The LR is computed by Adafactor itself; per-group LRs would be ignored, so drop them.
            for group in param_groups:
                group.pop("lr", None)
            lr = None
    optimizer = cls(param_groups, lr=lr, **call_kwargs)
    class_path = f"{cls.__module__}.{cls.__name__}"
    return optimizer, OptimizerChoice(
        name=name, class_path=class_path, kwargs=kwargs, adafactor_relative_step=relative_step
    )
