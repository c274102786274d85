"""The validate step: bring the dataset to a local folder (S3 -> sha256-verified cache) and run the dataset check.

It runs before anything costly, so a dataset that would train on zero images fails in seconds, not after a GPU
instance has been paid for.
"""

from __future__ import annotations

from pathlib import Path

from lorapipe.atomic import atomic_write_text
from lorapipe.errors import DatasetError, LorapipeError, StoreError
from lorapipe.pipeline.request import RunRequest
from lorapipe.pipeline.runlog import RunLog


def split_dataset_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/0001-dataset/`` -> (``s3://bucket/a``, ``0001-dataset``): the store root and dataset name."""
    trimmed = url.rstrip("/")
    root, _, name = trimmed.rpartition("/")
    if not name or root in ("s3:", "s3:/", ""):
        raise DatasetError(f"{url}: give the dataset folder's prefix, e.g. s3://BUCKET/0001-dataset/")
    return root, name


def materialise_dataset(request: RunRequest, cache_dir: Path, log: RunLog) -> Path:
    """A local folder holding the dataset: the folder itself, or a verified download of the S3 prefix."""
    if not request.dataset.startswith("s3://"):
        folder = Path(request.dataset).expanduser().resolve()
        if not folder.is_dir():
            raise DatasetError(
                f"{request.dataset}: no such dataset folder; give the NNNN-dataset folder or an s3:// prefix"
            )
        return folder
    from lorapipe.store import open_store

    root, name = split_dataset_url(request.dataset)
    log.info(f"validate: fetching {request.dataset} into the dataset cache")
    try:
        store = open_store(root, endpoint_url=request.s3_endpoint_url)
        return Path(store.fetch_dataset(name, cache_dir))
    except LorapipeError:
        raise
    except Exception as exc:  # botocore/s3fs raise their own types: say which store failed and why
        raise StoreError(
            f"{request.dataset}: cannot fetch the dataset ({type(exc).__name__}: {exc}); "
            "check the URL, --s3-endpoint-url and credentials"
        ) from exc


def validate_dataset(dataset_dir: Path, config: Path | None, report_path: Path, log: RunLog) -> str:
    """Run `dataset check`, keep its JSON report in the run folder, and raise on any error."""
    from lorapipe.dataset.check import check_dataset

    # Token counting would load the CLIP tokenizer (transformers) only to produce warnings; the trainer truncates.
    report = check_dataset(dataset_dir, None, config_path=config, count_tokens=False)
    atomic_write_text(report_path, report.to_json() + "\n")
    errors = [p for p in report.problems if p.severity == "error"]
    warnings = len(report.problems) - len(errors)
    images = sum(dataset.images for dataset in report.datasets)
    summary = f"{images} images, {len(errors)} errors, {warnings} warnings"
    log.info(f"validate: {summary}")
    if errors:
        first = f"{errors[0].path}: {errors[0].reason}"[:300]
        raise DatasetError(
            f"{dataset_dir}: dataset check failed ({summary}), first: {first}; "
            f"run `lorapipe dataset check {dataset_dir}` for the full report"
        )
    if images == 0:
        raise DatasetError(f"{dataset_dir}: no training images found; put them in <repeats>_<name>/ folders")
    return summary
