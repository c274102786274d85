"""Kohya's folder rule: `train_data_dir/<repeats>_<trigger> [class]/` subsets, found the way sd-scripts finds them.

sd-scripts splits each sub-folder name on "_": the first piece must be an integer (the repeat count), the rest,
re-joined with "_", is the class tokens used as the caption of images without a caption file. Other folders are
skipped with a warning, files beside the subsets are ignored, and sub-folders of a subset are never scanned.
lorapipe keeps those rules and turns each silent skip into a reported problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lorapipe.dataset.problems import Problem, error, warning

# Extensions sd-scripts trains on (lorapipe accepts them in any letter case).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
DATASET_FOLDER_RE = re.compile(r"^\d+-dataset$")
# SageMaker's channel paths; outside a training job the dataset's own folder stands in for them.
SAGEMAKER_PREFIX = "/opt/ml/"


@dataclass(frozen=True)
class FolderSubset:
    """One `<repeats>_<name>` folder as found on disk."""

    path: Path
    num_repeats: int
    class_tokens: str


def parse_subset_folder_name(name: str) -> tuple[int, str] | None:
    """`"20_dwjz toy"` -> `(20, "dwjz toy")`; `None` when the name does not start with an integer and "_"."""
    head, _, rest = name.partition("_")
    if not head.strip().lstrip("+-").isdigit():
        return None
    return int(head), rest


def split_trigger_and_class(class_tokens: str) -> tuple[str, str]:
    """`"sks dog"` -> `("sks", "dog")`: the first word is the trigger, the rest the class (may be empty)."""
    words = class_tokens.split()
    if not words:
        return "", ""
    return words[0], " ".join(words[1:])


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def find_folder_subsets(parent: Path, *, is_reg: bool) -> tuple[tuple[FolderSubset, ...], tuple[Problem, ...]]:
    """List the subset folders of a train_data_dir (or reg_data_dir) with a problem for everything skipped."""
    kind = "reg_data_dir" if is_reg else "train_data_dir"
    subsets: list[FolderSubset] = []
    problems: list[Problem] = []
    stray_images: list[Path] = []
    example = "1_dog" if is_reg else "20_dwjz toy"
    for child in sorted(parent.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue  # hidden folders/files (caches, .ipynb_checkpoints) are never datasets
        if child.is_file():
            if is_image_name(child.name):
                stray_images.append(child)
            continue
        if not child.is_dir():
            continue
        parsed = parse_subset_folder_name(child.name)
        if parsed is None:
            problems.append(
                warning(child, f"folder ignored: name must be <repeats>_<trigger> [class], e.g. '{example}'")
            )
            continue
        repeats, class_tokens = parsed
        if repeats < 1:
            problems.append(warning(child, f"folder ignored: repeat count {repeats} is below 1"))
            continue
        subsets.append(FolderSubset(child, repeats, class_tokens))
    if stray_images:
        names = ", ".join(p.name for p in stray_images[:3]) + (" ..." if len(stray_images) > 3 else "")
        reason = (
            f"{len(stray_images)} image(s) directly inside {kind} are not trained ({names}); "
            f"{kind} must be the parent of <repeats>_<name> folders — move them into e.g. '{parent / example}'"
        )
        problems.append(error(parent, reason, stray_images) if not subsets else warning(parent, reason, stray_images))
    elif not subsets:
        problems.append(
            error(parent, f"no <repeats>_<name> folders in {kind}; put images in e.g. '{parent / example}'")
        )
    return tuple(subsets), tuple(problems)


def resolve_data_dir(configured: str | None, dataset_dir: Path | None, key: str) -> tuple[Path | None, Problem | None]:
    """Map a configured train/reg data dir to a local folder, falling back to the dataset folder off SageMaker.

    The original recipe names `/opt/ml/input/data/train`; outside a training job that path does not exist, so the
    folder holding the config (where the subsets sit beside it) is used instead, with a warning saying so.
    """
    if configured:
        path = Path(configured).expanduser()
        if path.is_dir():
            return path, None
        if configured.startswith(SAGEMAKER_PREFIX) and dataset_dir is not None and key == "train_data_dir":
            note = warning(dataset_dir, f"{key} '{configured}' exists only inside SageMaker; using {dataset_dir}")
            return dataset_dir, note
        return None, error(configured, f"{key}: folder does not exist; fix the path in the config")
    if dataset_dir is not None and key == "train_data_dir":
        return dataset_dir, None
    return None, None
