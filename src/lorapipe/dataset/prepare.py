"""`dataset prepare`: a folder of phone photos -> a Kohya dataset folder with a config, ready to caption and train.

    out/kohya-sdxl-config.toml      the preset with output_name, max_train_epochs, sample_prompts filled in
    out/sample-prompts.txt          preview prompts naming the trigger
    out/<repeats>_<trigger> <class>/  copies of the usable photos

Originals are only read. Photos training can read as they are (JPEG/PNG/WebP/BMP, upright) are copied byte for
byte; HEIC/HEIF/AVIF/TIFF/GIF and photos with an EXIF rotation are decoded (rotation applied, since sd-scripts
ignores EXIF) and written as JPEG, or PNG when they have transparency. Broken files, empty files and byte
duplicates are left out, each with its reason, using the same image checks as `dataset check`. Everything is
written into a hidden staging folder first and moved into place at the end, so a crash leaves no half dataset.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorapipe.atomic import atomic_write_text
from lorapipe.dataset.images import (
    ACCEPTED_FORMATS,
    decode_image_with_alpha,
    extension_matches,
    read_image_header,
    register_phone_formats,
    verify_decodes,
)
from lorapipe.dataset.layout import (
    DATASET_FOLDER_RE,
    IMAGE_EXTENSIONS,
    SAGEMAKER_PREFIX,
    parse_subset_folder_name,
)
from lorapipe.dataset.names import printable, safe_stem
from lorapipe.dataset.preset import (
    DEFAULT_PRESET,
    PROMPTS_NAME,
    Preset,
    load_preset,
    plan_schedule,
    render_config,
    sample_prompts,
)
from lorapipe.dataset.problems import Problem
from lorapipe.errors import DatasetError
from lorapipe.file_names import DATASET_CONFIG_NAME
from lorapipe.hashes import sha256_file

# What prepare converts: phone formats (HEIC/HEIF from iPhones, AVIF from newer Androids) and other stills Pillow
# opens. Everything else in the folder (videos, .AAE edit sidecars) is listed as skipped.
CONVERTED_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".avif", ".tif", ".tiff", ".gif"})
PHOTO_EXTENSIONS = IMAGE_EXTENSIONS | CONVERTED_EXTENSIONS
JPEG_QUALITY = 95  # with 4:4:4 chroma: visually lossless, a quarter of PNG's size for photos
_TRIGGER_RE = re.compile(r"^[^\s,/\\]+$")  # one word: Kohya users read the first word of the folder as the trigger

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PreparedPhoto:
    """One photo in the dataset: where it came from, where it is now, and what was done to it."""

    source: Path
    target: Path
    note: str  # "copied", or what conversion/rotation/renaming happened
    converted: bool = False  # re-encoded (format or rotation) rather than copied byte for byte


@dataclass(frozen=True)
class SkippedPhoto:
    source: Path
    reason: str


@dataclass(frozen=True)
class PrepareResult:
    dataset_dir: Path
    subset_dir: Path
    config_path: Path
    prompts_path: Path
    preset: str
    kept: tuple[PreparedPhoto, ...]  # every photo in the dataset, converted ones included
    converted: tuple[PreparedPhoto, ...]  # the kept photos that were re-encoded (format or rotation)
    skipped: tuple[SkippedPhoto, ...]
    repeats: int
    epochs: int
    expected_steps: int  # as sd-scripts counts them (buckets and batch size included)
    problems: tuple[Problem, ...]  # what `dataset check` says about the result


def reason_of(exc: DatasetError, path: Path) -> str:
    """The message of a dataset-layer error about `path` without its leading "<path>: "."""
    text = str(exc)
    for prefix in (f"{path}: ", f"{printable(path)}: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def validate_names(trigger: str, class_name: str | None) -> tuple[str, str]:
    """The trigger is one rare word (the first word of the folder name is what Kohya users read as the trigger)."""
    trigger = (trigger or "").strip()
    class_name = " ".join((class_name or "").split())
    if not trigger:
        raise DatasetError("--trigger: a trigger word is required; pick a rare token such as 'sks' or 'ohwx'")
    if not _TRIGGER_RE.match(trigger) or not trigger.isprintable():
        raise DatasetError(
            f"--trigger {trigger!r}: must be one word without spaces, commas or slashes; put "
            "the rest in --class (e.g. --trigger sks --class 'dog')"
        )
    if any(c in class_name for c in "/\\,") or not class_name.isprintable():
        raise DatasetError(f"--class {class_name!r}: no slashes, commas or control characters; e.g. 'dog'")
    return trigger, class_name


def default_output(photos: Path) -> Path:
    """The first free `NNNN-dataset` folder beside the photo folder."""
    parent = photos.absolute().parent
    taken = {int(p.name.split("-")[0]) for p in parent.iterdir() if DATASET_FOLDER_RE.match(p.name)}
    number = 1
    while number in taken:
        number += 1
    return parent / f"{number:04d}-dataset"


def _check_output(photos: Path, out: Path) -> None:
    resolved_photos, resolved_out = photos.resolve(), out.resolve()
    if resolved_out == resolved_photos or resolved_photos in resolved_out.parents:
        raise DatasetError(
            f"{printable(out)}: the output is inside the photo folder {printable(photos)}; choose an "
            "--out outside it (prepare never writes into your photos)"
        )
    if out.is_file():
        raise DatasetError(f"{printable(out)}: is a file; choose a folder for --out")
    if not out.is_dir():
        return
    children = [c for c in out.iterdir() if not c.name.startswith(".")]
    if (out / DATASET_CONFIG_NAME).exists() or any(c.is_dir() and parse_subset_folder_name(c.name) for c in children):
        raise DatasetError(f"{printable(out)}: already holds a dataset; choose another --out or delete that folder")
    if children:
        raise DatasetError(f"{printable(out)}: folder is not empty; choose an empty or new --out folder")


def list_photos(photos: Path) -> tuple[list[Path], list[SkippedPhoto]]:
    """Photo files directly in `photos` (sorted by name), and everything else with why it is not used."""
    candidates: list[Path] = []
    skipped: list[SkippedPhoto] = []
    for child in sorted(photos.iterdir(), key=lambda p: (os.fsencode(p.stem), os.fsencode(p.suffix))):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            skipped.append(SkippedPhoto(child, "sub-folder: not scanned (put the photos directly in the folder)"))
        elif child.suffix.lower() not in PHOTO_EXTENSIONS:
            skipped.append(SkippedPhoto(child, f"not a photo ({child.suffix or 'no extension'})"))
        else:
            candidates.append(child)
    return candidates, skipped


class _Writer:
    """Copies or converts one photo at a time into `folder`, giving each a unique, safe stem."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir()
        self.stems: set[str] = set()

    def _target(self, source: Path, extension: str) -> tuple[Path, str]:
        stem = safe_stem(source.stem)
        note = "" if stem == source.stem else f"renamed from '{printable(source.name)}'"
        unique, number = stem, 2
        while unique.lower() in self.stems:  # IMG_1.HEIC and IMG_1.JPG would share IMG_1.txt
            unique, number = f"{stem}-{number}", number + 1
        if unique != stem:
            note = f"renamed to {unique} (another photo has the same name)"
        self.stems.add(unique.lower())
        return self.folder / f"{unique}{extension}", note

    def add(self, source: Path) -> PreparedPhoto:
        """Raises DatasetError (naming `source`) for a file training could not use."""
        if source.stat().st_size == 0:
            raise DatasetError(f"{printable(source)}: empty file (0 bytes)")
        header = read_image_header(source)
        if header.truncated:
            raise DatasetError(f"{printable(source)}: {header.format} file is truncated (incomplete copy)")
        if header.format in ACCEPTED_FORMATS and header.orientation == 1 and not header.animated:
            verify_decodes(source)  # a photo that breaks here would break training
            if extension_matches(source, header):
                target, renamed = self._target(source, source.suffix)
            else:  # a PNG named .jpg: other Kohya tools pick the decoder by extension
                target, renamed = self._target(source, ACCEPTED_FORMATS[header.format])
                renamed = renamed or f"copied as {target.suffix} (a {header.format} file named {source.suffix})"
            shutil.copyfile(source, target)
            return PreparedPhoto(source, target, renamed or "copied")
        rgb, alpha = decode_image_with_alpha(source)
        as_png = alpha is not None or header.format == "PNG"
        target, renamed = self._target(source, ".png" if as_png else ".jpg")
        if as_png:
            image = rgb.convert("RGBA") if alpha is not None else rgb
            if alpha is not None:
                image.putalpha(alpha)
            image.save(target, format="PNG")
        else:
            rgb.save(target, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
        what = (
            [f"converted {header.format} to {'PNG' if as_png else 'JPEG'}"]
            if header.format not in ACCEPTED_FORMATS
            else [f"re-encoded as {'PNG' if as_png else 'JPEG'}"]
        )
        if header.orientation != 1:
            what.append(f"EXIF orientation {header.orientation} applied")
        if header.animated:
            what.append("first frame only")
        return PreparedPhoto(source, target, ", ".join(what + ([renamed] if renamed else [])), converted=True)


def prepare_dataset(
    photos: Path,
    out: Path | None = None,
    *,
    trigger: str,
    class_name: str | None = None,
    preset: str = DEFAULT_PRESET,
    steps: int | None = None,
    progress: Progress | None = None,
    base_model: str | None = None,
) -> PrepareResult:
    """Build a Kohya dataset folder from `photos` (never modified). `preset` is a shipped name or a TOML path;
    `steps` overrides its step budget; `progress(done, total)` is called after each photo."""
    from lorapipe.dataset.check import check_dataset

    photos = Path(photos).expanduser()
    if not photos.is_dir():
        raise DatasetError(f"{printable(photos)}: photo folder does not exist; pass the folder holding your photos")
    trigger, class_name = validate_names(trigger, class_name)
    chosen = load_preset(preset)
    if steps is not None and steps < 1:
        raise DatasetError(f"--steps {steps}: must be at least 1")
    out = Path(out).expanduser() if out is not None else default_output(photos)
    _check_output(photos, out)
    register_phone_formats()
    candidates, skipped = list_photos(photos)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    # A fresh hidden folder beside `out`: same filesystem, so the final rename is atomic; unique per call, so two
    # prepares in one process (as the studio may run) never share one.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
    try:
        kept = _copy_photos(candidates, _Writer(staging / "images"), skipped, progress)
        if not kept:
            reasons = "; ".join(f"{printable(s.source.name)}: {s.reason}" for s in skipped[:3])
            raise DatasetError(
                f"{printable(photos)}: no usable photos ({len(skipped)} left out{': ' if reasons else ''}"
                f"{reasons}); add JPEG, PNG, HEIC or AVIF photos"
            )
        repeats, epochs = plan_schedule(len(kept), steps or chosen.step_budget, chosen.batch_size)
        subject = f"{trigger} {class_name}".strip()
        subset_name = f"{repeats}_{subject}"
        os.replace(staging / "images", staging / subset_name)
        budget = (
            f"{steps or chosen.step_budget} steps budget of {chosen.name}: {len(kept)} photos x {repeats} "
            f"repeats x {epochs} epochs (max_train_epochs overrides it)"
        )
        _write_config(staging, chosen, subject, epochs, budget, base_model)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    kept = tuple(PreparedPhoto(p.source, out / subset_name / p.target.name, p.note, p.converted) for p in kept)
    report = check_dataset(out, count_tokens=False).datasets[0]
    return PrepareResult(
        dataset_dir=out,
        subset_dir=out / subset_name,
        config_path=out / DATASET_CONFIG_NAME,
        prompts_path=out / PROMPTS_NAME,
        preset=chosen.name,
        kept=kept,
        converted=tuple(p for p in kept if p.converted),
        skipped=tuple(skipped),
        repeats=repeats,
        epochs=report.epochs,
        expected_steps=report.total_steps,
        problems=report.problems,
    )


def _write_config(folder: Path, preset: Preset, subject: str, epochs: int, budget: str, base_model: str | None) -> None:
    settings: dict[str, object] = {
        "output_name": safe_stem("_".join(subject.split())),
        "max_train_epochs": epochs,
        "sample_prompts": PROMPTS_NAME,
    }
    if base_model:
        settings["pretrained_model_name_or_path"] = base_model
    drop = {"max_train_steps": budget}
    # A user's preset may point at other images; the photos now sit beside this config, where lorapipe looks
    # (and SageMaker's /opt/ml/input/data/train channel maps), so other image sources are commented out.
    configured = str(preset.values.get("train_data_dir") or "")
    if configured and not configured.startswith(SAGEMAKER_PREFIX):
        drop["train_data_dir"] = "prepare put the photos beside this file (lorapipe trains from here)"
    if preset.values.get("dataset_config"):
        drop["dataset_config"] = "prepare wrote the <repeats>_<name> folder beside this file instead"
    atomic_write_text(folder / DATASET_CONFIG_NAME, render_config(preset, settings, drop=drop))
    atomic_write_text(folder / PROMPTS_NAME, sample_prompts(preset, subject))


def _move_into_place(staging: Path, out: Path) -> None:
    try:
        if out.is_dir():
            out.rmdir()  # checked empty above; the rename needs the name free
        os.replace(staging, out)
    except OSError as exc:  # another run wrote `out` meanwhile (e.g. two prepares picking the same default)
        raise DatasetError(
            f"{printable(out)}: was created by another run while preparing ({exc.strerror}); run prepare again "
            "or choose another --out"
        ) from None


def _copy_photos(
    candidates: list[Path], writer: _Writer, skipped: list[SkippedPhoto], progress: Progress | None
) -> list[PreparedPhoto]:
    kept: list[PreparedPhoto] = []
    first_with: dict[str, Path] = {}
    for done, source in enumerate(candidates, start=1):
        try:
            digest = sha256_file(source)
            if digest in first_with:
                skipped.append(SkippedPhoto(source, f"byte-identical to {printable(first_with[digest].name)}"))
            else:
                kept.append(writer.add(source))
                first_with[digest] = source
        except DatasetError as exc:
            skipped.append(SkippedPhoto(source, reason_of(exc, source)))
        except OSError as exc:  # unreadable file (permissions, vanished): leave it out, say why
            skipped.append(SkippedPhoto(source, f"cannot read ({exc.strerror or exc})"))
        if progress is not None:
            progress(done, len(candidates))
    return kept


def unprepared_hint(folder: Path) -> str | None:
    """For a folder of loose photos without a Kohya config: the one command that prepares it (else None)."""
    if not folder.is_dir() or (folder / DATASET_CONFIG_NAME).exists():
        return None
    photos = [c for c in folder.iterdir() if c.is_file() and c.suffix.lower() in PHOTO_EXTENSIONS]
    if not photos or any(c.is_dir() and parse_subset_folder_name(c.name) for c in folder.iterdir()):
        return None
    out = default_output(folder)
    return (
        f"{printable(folder)} holds {len(photos)} photo(s) but no {DATASET_CONFIG_NAME}, so it is not a Kohya "
        f"dataset yet. Prepare one (preset '{DEFAULT_PRESET}'; --preset face or style for others):\n"
        f"  lorapipe dataset prepare {_quote(folder)} --trigger sks --class dog --out {_quote(out)}\n"
        f"then: lorapipe dataset caption {_quote(out)} && lorapipe train {_quote(out)}"
    )


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(printable(path))
