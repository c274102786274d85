"""The prompts every checkpoint renders: the subject in new contexts (with its trigger) and prompts without it.

Subject prompts follow the DreamBooth paper's recontextualisation set; the no-trigger prompts show how far the LoRA
leaks into everything else. A prompts file has one prompt per line; `{subject}` stands for the dataset's class
tokens (e.g. "dwjz toy"), lines starting with `leak:` are no-trigger prompts, `#` starts a comment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lorapipe.dataset.layout import find_folder_subsets, parse_subset_folder_name, split_trigger_and_class
from lorapipe.errors import EvaluationError

LEAK_PREFIX = "leak:"
SUBJECT_PLACEHOLDER = "{subject}"
DEFAULT_SUBJECT_PROMPTS = (
    "a photo of {subject} on a beach",
    "a photo of {subject} in the jungle",
    "a photo of {subject} on a city street at night",
    "a photo of {subject} on top of a wooden table",
)
DEFAULT_LEAK_PROMPTS = ("a photo of a dog on a beach", "a bowl of fruit on a kitchen table")


@dataclass(frozen=True)
class EvalPrompt:
    """One prompt: `text` is rendered, `clip_text` is what CLIP-T compares against (trigger removed)."""

    index: int
    text: str
    clip_text: str
    with_trigger: bool
    seed: int


@dataclass(frozen=True)
class Subject:
    """The trained subject: `tokens` as in the folder name ("dwjz toy"), `trigger` its first word ("dwjz")."""

    tokens: str
    trigger: str


def subject_of(dataset_dir: Path, lora_metadata: dict[str, str] | None = None) -> Subject:
    """The subject named by the dataset's `<repeats>_<trigger> [class]` folder (the first one), else by the folder
    names sd-scripts recorded in the LoRA's `ss_dataset_dirs` (a dataset given as a plain image folder)."""
    subsets, _problems = find_folder_subsets(Path(dataset_dir), is_reg=False)
    if subsets:
        return subject_from_tokens(subsets[0].class_tokens, str(subsets[0].path))
    try:
        recorded = json.loads((lora_metadata or {}).get("ss_dataset_dirs") or "{}")
    except json.JSONDecodeError:
        recorded = {}
    for name in recorded if isinstance(recorded, dict) else ():
        parsed = parse_subset_folder_name(name)
        if parsed and parsed[1].strip():
            return subject_from_tokens(parsed[1], f"ss_dataset_dirs {name!r}")
    raise EvaluationError(
        f"{dataset_dir}: no <repeats>_<trigger> [class] folder, and the LoRA records none (ss_dataset_dirs); pass "
        "the dataset the run was trained on (--dataset), or --trigger"
    )


def subject_from_tokens(tokens: str, source: str = "--trigger") -> Subject:
    trigger, _class = split_trigger_and_class(tokens)
    if not trigger:
        raise EvaluationError(f"{source}: no trigger word; name the subject, e.g. 'dwjz toy'")
    return Subject(tokens=" ".join(tokens.split()), trigger=trigger)


def default_prompts(subject: Subject, seed: int = 1000) -> tuple[EvalPrompt, ...]:
    lines = [p.replace(SUBJECT_PLACEHOLDER, subject.tokens) for p in DEFAULT_SUBJECT_PROMPTS]
    lines += [LEAK_PREFIX + " " + p for p in DEFAULT_LEAK_PROMPTS]
    return _build(lines, subject, seed)


def read_prompts(path: Path, subject: Subject, seed: int = 1000) -> tuple[EvalPrompt, ...]:
    """Prompts from a file; a subject line must contain the trigger, a `leak:` line must not."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read the prompts file ({exc}); pass a UTF-8 text file") from exc
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append((number, line.replace(SUBJECT_PLACEHOLDER, subject.tokens)))
    if not lines:
        raise EvaluationError(
            f"{path}: no prompts; write one prompt per line, e.g. 'a photo of {{subject}} on a beach'"
        )
    for number, line in lines:
        has_trigger = _contains_word(line, subject.trigger)
        if line.startswith(LEAK_PREFIX) and has_trigger:
            raise EvaluationError(
                f"{path}:{number}: a leak: prompt contains the trigger '{subject.trigger}'; remove "
                "it or drop 'leak:' to make it a subject prompt"
            )
        if not line.startswith(LEAK_PREFIX) and not has_trigger:
            raise EvaluationError(
                f"{path}:{number}: prompt does not contain the trigger '{subject.trigger}'; add it "
                f"(or write {SUBJECT_PLACEHOLDER}), or start the line with 'leak:' to use it as a "
                "no-trigger prompt"
            )
    built = _build([line for _n, line in lines], subject, seed)
    if not any(p.with_trigger for p in built):
        raise EvaluationError(
            f"{path}: every prompt is a leak: prompt; add at least one prompt with the trigger '{subject.trigger}'"
        )
    return built


def _build(lines: list[str], subject: Subject, seed: int) -> tuple[EvalPrompt, ...]:
    prompts = []
    for index, line in enumerate(lines):
        leak = line.startswith(LEAK_PREFIX)
        text = line.removeprefix(LEAK_PREFIX).strip() if leak else line
        prompts.append(
            EvalPrompt(
                index=index,
                text=text,
                clip_text=_without_word(text, subject.trigger),
                with_trigger=not leak,
                seed=seed + 100 * index,
            )
        )
    return tuple(prompts)


def _contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


def _without_word(text: str, word: str) -> str:
    """The prompt as CLIP should read it: the made-up trigger word removed (DreamBooth's CLIP-T)."""
    stripped = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", " ", text, flags=re.IGNORECASE)
    return " ".join(stripped.replace(" ,", ",").split())
