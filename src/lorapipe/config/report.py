"""What `lorapipe config check` and `lorapipe config keys` print (text or JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from lorapipe.config.keys import KEY_TABLE
from lorapipe.config.load import ConfigProblems, load_train_config
from lorapipe.errors import LorapipeError


def check_file(
    file: str,
    *,
    dataset_dir: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    output_dir: str | None = None,
    base_model: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Load the config, print the effective values and warnings (or the errors); 0 when valid, 1 otherwise."""
    out = out or sys.stdout
    path = Path(file)
    errors: list[str] = []
    warnings: list[str] = []
    config: dict[str, Any] | None = None
    try:
        loaded = load_train_config(
            Path(dataset_dir) if dataset_dir else path.absolute().parent,
            config_path=path,
            overrides=overrides,
            output_dir=Path(output_dir) if output_dir else None,
            base_model=base_model,
            for_training=False,
        )
        config = loaded.config.to_dict()
        warnings = list(loaded.warnings)
    except ConfigProblems as exc:
        errors, warnings = list(exc.errors), list(exc.warnings)
    except LorapipeError as exc:
        errors = [str(exc)]
    if as_json:
        report = {"ok": not errors, "file": str(path), "errors": errors, "warnings": warnings, "config": config}
        out.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        out.write(render_text(path, errors, warnings, config))
    return 1 if errors else 0


def render_text(path: Path, errors: list[str], warnings: list[str], config: dict[str, Any] | None) -> str:
    lines: list[str] = []
    if config is not None:
        lines.append(f"effective config of {path}:")
        for key, value in config.items():
            if key != "dataset":
                lines.append(f"  {key} = {json.dumps(value, default=str)}")
        lines.extend(_dataset_lines(config.get("dataset")))
    for warning in warnings:
        lines.append(f"warning: {warning}")
    for error in errors:
        lines.append(f"error: {error}")
    verdict = f"{len(errors)} error(s), {len(warnings)} warning(s)"
    lines.append(("INVALID: " if errors else "OK: ") + verdict)
    return "\n".join(lines) + "\n"


def _dataset_lines(dataset: dict[str, Any] | None) -> list[str]:
    if not dataset:
        return []
    lines = ["  dataset:"]
    for key, value in dataset.items():
        if key == "subsets":
            for subset in value:
                lines.append(
                    f"    subset {subset.get('image_dir')}: repeats {subset.get('num_repeats')}, "
                    f"class_tokens {subset.get('class_tokens')!r}, reg {subset.get('is_reg')}"
                )
        elif key != "notes":
            lines.append(f"    {key} = {json.dumps(value, default=str)}")
    return lines


def print_keys(*, as_json: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    rows = sorted(KEY_TABLE.values(), key=lambda spec: (spec.status, spec.name))
    if as_json:
        data = [
            {"key": s.name, "status": s.status, "reason": s.reason, "maps_to": s.maps_to, "gui": s.gui} for s in rows
        ]
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    width = max(len(s.name) for s in rows)
    for spec in rows:
        target = f" -> {spec.maps_to}" if spec.maps_to else ""
        out.write(f"{spec.name:<{width}}  {spec.status:<9}  {spec.reason}{target}\n")
    return 0
