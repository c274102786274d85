"""`dataset check`: everything training would do with a dataset, reported before any GPU is paid for.

Accepts a dataset root holding `NNNN-dataset/` folders, one `NNNN-dataset` folder (the one holding
`kohya-sdxl-config.toml`, with its `<repeats>_<name>` subsets beside the file), a bare train_data_dir, or an
`s3://bucket/prefix` URL of any of these (fetched into the sha256-verified cache first).
"""

from __future__ import annotations

import json
import statistics
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lorapipe.dataset.blueprint import DatasetBlueprint
from lorapipe.dataset.build import blueprint_from_args, blueprint_from_dataset_config
from lorapipe.dataset.layout import DATASET_FOLDER_RE, split_trigger_and_class
from lorapipe.dataset.problems import Problem, warning
from lorapipe.dataset.scan import DatasetScan, bucket_sample_counts, scan_dataset, steps_per_epoch, total_steps
from lorapipe.errors import ConfigError, DatasetError
from lorapipe.file_names import DATASET_CONFIG_NAME, user_cache_dir

# Used only when a folder has no config at all: kohya_ss GUI defaults for SDXL.
_FALLBACK_ARGS = {"resolution": "1024,1024", "enable_bucket": True, "min_bucket_reso": 256, "max_bucket_reso": 2048}


@dataclass(frozen=True)
class SubsetReport:
    folder: str
    repeats: int
    trigger: str
    class_name: str
    is_reg: bool
    images: int
    captions: int
    samples_per_epoch: int


@dataclass(frozen=True)
class DatasetReport:
    name: str
    path: str
    config: str | None
    subsets: tuple[SubsetReport, ...]
    images: int
    captions: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    buckets: tuple[dict[str, Any], ...]
    caption_stats: dict[str, Any]
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class CheckReport:
    target: str
    datasets: tuple[DatasetReport, ...]

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(p for d in self.datasets for p in d.problems)

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": not self.has_errors,
            "errors": sum(p.severity == "error" for p in self.problems),
            "warnings": sum(p.severity == "warning" for p in self.problems),
            "datasets": [asdict(d) for d in self.datasets],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def read_flat_config(path: Path) -> dict[str, Any]:
    """A Kohya training TOML flattened the way sd-scripts' read_config_from_file does (section names dropped)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _dataset_folders(root: Path) -> list[Path]:
    if (root / DATASET_CONFIG_NAME).is_file():
        return [root]
    children = sorted(p for p in root.iterdir() if p.is_dir() and DATASET_FOLDER_RE.match(p.name))
    return children or [root]


def _caption_stats(scan: DatasetScan, count_tokens: bool) -> tuple[dict[str, Any], list[Problem]]:
    captions = [i.caption for i in scan.items]
    words = [len(c.replace(",", " ").split()) for c in captions]
    stats: dict[str, Any] = {"max_token_length": scan.blueprint.max_token_length}
    if words:
        stats.update(words_min=min(words), words_mean=round(statistics.fmean(words), 1), words_max=max(words))
    problems: list[Problem] = []
    if count_tokens and captions:
        from lorapipe.dataset.tokens import CaptionTokenCounter

        texts = [
            " ".join(filter(None, (i.subset.caption_prefix, i.caption, i.subset.caption_suffix))) for i in scan.items
        ]
        counts = CaptionTokenCounter().count(texts)
        limit = scan.blueprint.max_token_length
        stats.update(tokens_min=min(counts), tokens_mean=round(statistics.fmean(counts), 1), tokens_max=max(counts))
        truncated = [(i, n) for i, n in zip(scan.items, counts) if n > limit]
        stats["truncated"] = len(truncated)
        for item, n in truncated:
            problems.append(
                warning(
                    item.caption_path or item.path,
                    f"caption has {n} tokens; everything after "
                    f"{limit} is cut (max_token_length = {limit}; 150 or 225 keep more)",
                )
            )
    return stats, problems


def report_for(
    name: str,
    path: Path,
    blueprint: DatasetBlueprint,
    *,
    train_args: Mapping[str, Any] | None = None,
    config: str | None = None,
    count_tokens: bool = True,
    hash_all: bool = False,
    deep: bool = False,
    extra_problems: tuple[Problem, ...] = (),
) -> DatasetReport:
    """Scan `blueprint` and summarise it; `train_args` supplies max_train_epochs/steps for the total."""
    scan = scan_dataset(blueprint, deep=deep, hash_all=hash_all)
    args = train_args or {}
    steps, epochs = total_steps(
        scan,
        max_train_epochs=int(args["max_train_epochs"]) if args.get("max_train_epochs") else None,
        max_train_steps=int(args["max_train_steps"]) if args.get("max_train_steps") else None,
        gradient_accumulation_steps=int(args.get("gradient_accumulation_steps") or 1),
    )
    subsets = []
    for subset in blueprint.subsets:
        members = [i for i in scan.items if i.subset == subset]
        trigger, class_name = split_trigger_and_class(subset.class_tokens or "")
        subsets.append(
            SubsetReport(
                folder=str(subset.image_dir),
                repeats=subset.num_repeats,
                trigger=trigger,
                class_name=class_name,
                is_reg=subset.is_reg,
                images=len(members),
                captions=sum(1 for i in members if i.caption_path),
                samples_per_epoch=sum(i.repeats for i in members),
            )
        )
    image_counts: dict[tuple[int, int], int] = {}
    for item in scan.items:
        image_counts[item.bucket] = image_counts.get(item.bucket, 0) + 1
    buckets = tuple(
        {"width": w, "height": h, "images": image_counts.get((w, h), 0), "samples": n}
        for (w, h), n in bucket_sample_counts(scan).items()
    )
    stats, token_problems = _caption_stats(scan, count_tokens)
    return DatasetReport(
        name=name,
        path=str(path),
        config=config,
        subsets=tuple(subsets),
        images=len(scan.items),
        captions=sum(1 for i in scan.items if i.caption_path),
        batch_size=blueprint.batch_size,
        steps_per_epoch=steps_per_epoch(scan),
        total_steps=steps,
        epochs=epochs,
        buckets=buckets,
        caption_stats=stats,
        problems=tuple(extra_problems) + scan.problems + tuple(token_problems),
    )


def _folder_config(folder: Path, config_path: Path | None) -> Path | None:
    """The training config for `folder`: the one given, else the folder's own one when it has it."""
    if config_path is not None:
        return config_path
    own = folder / DATASET_CONFIG_NAME
    return own if own.is_file() else None


def folder_blueprint(
    folder: Path, config_path: Path | None = None, dataset_config_path: Path | None = None
) -> tuple[DatasetBlueprint, dict[str, Any], tuple[Problem, ...]]:
    """The blueprint training would read for one local dataset folder (its own config unless one is given), the
    flat training args, and a note when the folder has no config at all."""
    extra: list[Problem] = []
    config_path = _folder_config(folder, config_path)
    if config_path is not None:
        args = read_flat_config(config_path)
        source = str(config_path)
    else:
        args = dict(_FALLBACK_ARGS)
        source = str(folder)
        extra.append(
            warning(
                folder,
                f"no {DATASET_CONFIG_NAME} here; checked with resolution 1024,1024, buckets "
                "on and sd-scripts' caption_extension .caption",
            )
        )
    if dataset_config_path is not None:
        blueprint = blueprint_from_dataset_config(dataset_config_path, args)
    else:
        blueprint = blueprint_from_args(args, source=source, dataset_dir=folder)
    return blueprint, args, tuple(extra)


def _check_local_folder(
    folder: Path, config_path: Path | None, dataset_config_path: Path | None, **options: Any
) -> DatasetReport:
    config = _folder_config(folder, config_path)
    blueprint, args, extra = folder_blueprint(folder, config, dataset_config_path)
    return report_for(
        folder.name,
        folder,
        blueprint,
        train_args=args,
        config=str(config or "") or None,
        extra_problems=extra,
        **options,
    )


def _relabel(report: DatasetReport, local_root: Path, url: str) -> DatasetReport:
    """Show bucket URLs instead of cache paths in a remote dataset's report."""
    prefix = str(local_root)

    def fix(text: str) -> str:
        return url + text[len(prefix) :] if text.startswith(prefix) else text

    problems = tuple(
        Problem(fix(p.path), p.severity, p.reason.replace(prefix, url), tuple(fix(f) for f in p.files))
        for p in report.problems
    )
    subsets = tuple(SubsetReport(**{**asdict(s), "folder": fix(s.folder)}) for s in report.subsets)
    return DatasetReport(
        **{
            **{f: getattr(report, f) for f in report.__dataclass_fields__},
            "path": url,
            "problems": problems,
            "subsets": subsets,
        }
    )


def check_dataset(
    path_or_url: str | Path,
    blueprint: DatasetBlueprint | None = None,
    *,
    config_path: Path | None = None,
    dataset_config_path: Path | None = None,
    train_args: Mapping[str, Any] | None = None,
    endpoint_url: str | None = None,
    cache_dir: Path | None = None,
    count_tokens: bool = True,
    hash_all: bool = False,
    deep: bool = False,
) -> CheckReport:
    """Check a dataset; with `blueprint` given (the trainer's own), exactly that blueprint is scanned."""
    options = {"count_tokens": count_tokens, "hash_all": hash_all, "deep": deep}
    target = str(path_or_url)
    if blueprint is not None:
        folder = Path(target)
        report = report_for(folder.name, folder, blueprint, train_args=train_args, **options)
        return CheckReport(target, (report,))
    if target.startswith("s3://"):
        return _check_remote(target, endpoint_url, cache_dir, config_path, dataset_config_path, options)
    root = Path(target).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    reports = tuple(
        _check_local_folder(folder, config_path, dataset_config_path, **options) for folder in _dataset_folders(root)
    )
    return CheckReport(target, reports)


def _check_remote(
    url: str,
    endpoint_url: str | None,
    cache_dir: Path | None,
    config_path: Path | None,
    dataset_config_path: Path | None,
    options: dict[str, Any],
) -> CheckReport:
    from lorapipe.store import open_store

    cache = Path(cache_dir) if cache_dir else user_cache_dir()
    cache = cache / "datasets"
    store = open_store(url, endpoint_url=endpoint_url)
    if store.exists(DATASET_CONFIG_NAME):  # the URL is one dataset: fetch it through its parent
        parent_url, name = url.rstrip("/").rsplit("/", 1)
        pairs = [(open_store(parent_url, endpoint_url=endpoint_url), name)]
    else:
        pairs = [(store, name) for name in store.list_datasets()]
        if not pairs:
            raise DatasetError(f"{url}: no NNNN-dataset prefixes and no {DATASET_CONFIG_NAME} here; fix the URL")
    reports = []
    for dataset_store, name in pairs:
        local = dataset_store.fetch_dataset(name, cache / dataset_store.url.replace("://", "/"))
        report = _check_local_folder(local, config_path, dataset_config_path, **options)
        reports.append(_relabel(report, local, dataset_store.url_of(name)))
    return CheckReport(url, tuple(reports))
