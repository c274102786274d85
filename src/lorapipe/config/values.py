"""Turn one raw TOML / `--set` value into the type its `TrainConfig` field declares, or say what is wrong.

Kohya files are written by hand and by the kohya_ss GUI, which stores flags as 0/1 and some numbers as strings, so
those forms are accepted; anything else is an error message (the caller adds the file name).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lorapipe.config import model

_BOOL_WORDS = {"true": True, "false": False}


class ValueProblem(ValueError):
    """A value that does not fit its key; the text says what to write instead."""


def coerce(value: Any, item: dataclasses.Field) -> Any:
    """The value for field `item` (a TrainConfig field), validated against its kind and bounds."""
    kind = item.metadata["kind"]
    if value is None:
        return item.default
    if kind == model.FLAG:
        return _flag(value)
    if kind == model.INT:
        return _bounded(_int(value), item)
    if kind == model.FLOAT:
        return _bounded(_float(value), item)
    if kind == model.NUMBER:
        return _number(value)
    if kind == model.FLOAT_OR_LIST:
        return _float_or_list(value)
    if kind in (model.STR, model.PATH):
        if not isinstance(value, str):
            raise ValueProblem(f"must be a quoted string, got {value!r}")
        return value
    if kind == model.STR_LIST:
        return _str_list(value)
    raise AssertionError(f"unknown kind {kind!r} for {item.name}")


def is_off(value: Any) -> bool:
    """True for the values that leave an option off: false, 0, "", [], none."""
    if value is None or value is False:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) == 0 or (isinstance(value, str) and value.strip().lower() in ("none", "false", "0"))
    return False


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # the GUI writes persistent_data_loader_workers = 1
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ValueProblem(f"must be true or false, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueProblem(f"must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueProblem(f"must be a whole number, got {value!r}")


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueProblem(f"must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueProblem(f"must be a number, got {value!r}") from None
    else:
        raise ValueProblem(f"must be a number, got {value!r}")
    if not math.isfinite(number):
        raise ValueProblem(f"must be a finite number, got {value!r}")
    return number


def _number(value: Any) -> int | float:
    """An int stays an int (a step count); a float stays a float (sd-scripts: a fraction of all steps)."""
    if isinstance(value, str):
        text = value.strip()
        value = _int(text) if text.lstrip("-").isdigit() else _float(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueProblem(f"must be a step count or a fraction, got {value!r}")
    if value < 0:
        raise ValueProblem(f"must be 0 or more, got {value!r}")
    if isinstance(value, float) and value > 1:
        raise ValueProblem(
            f"= {value} is a float, which sd-scripts reads as a fraction of all steps; "
            f"write a whole number of steps ({int(value)}) or a fraction below 1"
        )
    return value


def _float_or_list(value: Any) -> float:
    """text_encoder_lr: a number or a list (the GUI writes [te_lr, te_lr]); networks.lora uses the first value."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueProblem("is an empty list; give a number")
        value = value[0]
    number = _float(value)
    if number < 0:
        raise ValueProblem(f"must be 0 or more, got {number}")
    return number


def _str_list(value: Any) -> tuple[str, ...]:
    """A TOML list of strings, or one string of space-separated items (as on sd-scripts' command line)."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise ValueProblem(f'must be a list of "key=value" strings, got {value!r}')


def _bounded(number: int | float, item: dataclasses.Field) -> int | float:
    low = item.metadata.get("minimum", item.metadata.get("low"))
    high = item.metadata.get("high")
    if low is not None and number < low:
        raise ValueProblem(f"= {number} must be at least {low}")
    if high is not None and number > high:
        raise ValueProblem(f"= {number} must be at most {high}")
    return number
