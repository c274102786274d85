"""Plain-text rendering of a `CheckReport` (the JSON form carries the same content)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lorapipe.dataset.check import CheckReport, DatasetReport

MAX_LISTED_FILES = 20  # per problem in the text report; the JSON report lists all


def _dataset_block(d: DatasetReport) -> list[str]:
    lines = [f"dataset {d.name}  ({d.path})"]
    if d.config:
        lines.append(f"  config: {d.config}")
    for s in d.subsets:
        kind = "reg " if s.is_reg else ""
        lines.append(
            f"  {kind}subset {s.folder.rsplit('/', 1)[-1]!r}: repeats {s.repeats}, trigger {s.trigger!r}, "
            f"class {s.class_name!r}, {s.images} images, {s.captions} captions, "
            f"{s.samples_per_epoch} samples/epoch"
        )
    lines.append(f"  images {d.images}, captions {d.captions}, batch size {d.batch_size}")
    lines.append(f"  steps per epoch {d.steps_per_epoch}; total {d.total_steps} steps over {d.epochs} epoch(s)")
    if d.buckets:
        widest = max(b["samples"] for b in d.buckets) or 1
        lines.append("  buckets (w x h: images / samples per epoch):")
        for b in d.buckets:
            bar = "#" * max(1, round(30 * b["samples"] / widest))
            lines.append(f"    {b['width']:>5} x {b['height']:<5} {b['images']:>5} / {b['samples']:<6} {bar}")
    stats = d.caption_stats
    if "words_min" in stats:
        text = f"  captions: {stats['words_min']}-{stats['words_max']} words (mean {stats['words_mean']})"
        if "tokens_max" in stats:
            text += (
                f"; {stats['tokens_min']}-{stats['tokens_max']} CLIP tokens (mean {stats['tokens_mean']}), "
                f"{stats['truncated']} over {stats['max_token_length']}"
            )
        lines.append(text)
    return lines


def _file_lines(folder: str, files: tuple[str, ...]) -> list[str]:
    """The files a folder-level problem concerns, relative to the folder; long lists end with a count."""
    prefix = folder.rstrip("/") + "/"
    names = [f.removeprefix(prefix) for f in files]
    shown = names[:MAX_LISTED_FILES]
    lines = [f"        {name}" for name in shown]
    if len(names) > len(shown):
        lines.append(f"        ... and {len(names) - len(shown)} more (--json lists every file)")
    return lines


def render_report(report: CheckReport) -> str:
    lines: list[str] = []
    for dataset in report.datasets:
        lines.extend(_dataset_block(dataset))
        lines.append("")
    problems = report.problems
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    for p in sorted(problems, key=lambda p: (p.severity != "error", p.path)):
        lines.append(f"{p.severity.upper():7} {p.path}: {p.reason}")
        lines.extend(_file_lines(p.path, p.files))
    verdict = "FAILED" if errors else "OK"
    lines.append(f"{verdict}: {errors} error(s), {warnings} warning(s)")
    return "\n".join(lines) + "\n"
