"""The SageMaker bring-your-own-container training contract, as plain paths and small parsers.

SageMaker starts the image with the argument ``train`` and talks to it only through files under ``/opt/ml``:
``input/config/hyperparameters.json`` (every value a string), ``input/config/resourceconfig.json``, channels copied
to ``input/data/<channel>``, the model written to ``model/`` (tarred at the end), checkpoints synced from
``checkpoints/`` and a failure description in ``output/failure`` (only the first 1024 characters become
``FailureReason``). The ``SM_*`` variables exist only under the SageMaker training toolkit, which our image does not
install, so nothing here relies on them.

The root is configurable (argument, then ``LORAPIPE_OPT_ML``, then ``/opt/ml``) so tests run the whole contract in a
temporary folder. This module imports only the standard library and ``lorapipe.errors``: the trainer's container
entry point may import it without pulling the pipeline in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lorapipe.atomic import atomic_write_text
from lorapipe.errors import ConfigError, DatasetError
from lorapipe.file_names import DATASET_CONFIG_NAME

DEFAULT_ROOT = Path("/opt/ml")
ROOT_ENV = "LORAPIPE_OPT_ML"
TRAIN_CHANNEL = "train"
CONFIG_CHANNEL = "config"  # optional channel: the training TOML given with --config, apart from the dataset
# SageMaker keeps only this many characters of output/failure as the job's FailureReason.
FAILURE_LIMIT = 1024
# Hyperparameters SageMaker or its SDKs add on their own; they are not training options.
_PLATFORM_HYPERPARAMETER_PREFIXES = ("sagemaker_", "_")


@dataclass(frozen=True)
class OptMl:
    """Every path of the container contract below one root (``/opt/ml`` in a real job)."""

    root: Path

    @classmethod
    def resolve(cls, root: str | os.PathLike[str] | None = None) -> OptMl:
        """The root from the argument, else ``$LORAPIPE_OPT_ML``, else ``/opt/ml``."""
        chosen = root if root not in (None, "") else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
        return cls(Path(chosen))

    @property
    def input_config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.input_config_dir / "hyperparameters.json"

    @property
    def resource_config_file(self) -> Path:
        return self.input_config_dir / "resourceconfig.json"

    @property
    def input_data_config_file(self) -> Path:
        return self.input_config_dir / "inputdataconfig.json"

    def channel_dir(self, name: str = TRAIN_CHANNEL) -> Path:
        return self.root / "input" / "data" / name

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"


@dataclass(frozen=True)
class ResourceConfig:
    """``resourceconfig.json``: which host this is among the job's (sorted) hosts."""

    current_host: str = "algo-1"
    hosts: tuple[str, ...] = ("algo-1",)
    network_interface_name: str = "eth0"

    @property
    def is_leader(self) -> bool:
        return self.current_host == self.hosts[0]


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); check the container's /opt/ml mount") from exc
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a JSON object at the top level; write {{"key": "value"}}')
    return data


def read_hyperparameters(opt_ml: OptMl) -> dict[str, str]:
    """Hyperparameters as strings (SageMaker stores every value as a JSON string); missing file = none.

    Non-string JSON values (from hand-written files) are accepted and turned into their JSON text, so
    ``4`` and ``"4"`` mean the same. Platform keys (``sagemaker_*``, ``_*``) are dropped.
    """
    path = opt_ml.hyperparameters_file
    if not path.exists():
        return {}
    hyperparameters: dict[str, str] = {}
    for key, value in _read_json_object(path).items():
        if key.startswith(_PLATFORM_HYPERPARAMETER_PREFIXES):
            continue
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: hyperparameter {key!r} is a JSON {type(value).__name__}; give a string")
        hyperparameters[key] = value if isinstance(value, str) else json.dumps(value)
    return hyperparameters


def hyperparameters_to_overrides(hyperparameters: dict[str, str]) -> tuple[str, ...]:
    """``key=value`` strings in the form ``lorapipe train --set`` takes; the config layer parses the types."""
    return tuple(f"{key}={value}" for key, value in sorted(hyperparameters.items()))


def read_resource_config(opt_ml: OptMl) -> ResourceConfig:
    """The job's hosts; a single default host when the file is absent (local runs, tests)."""
    path = opt_ml.resource_config_file
    if not path.exists():
        return ResourceConfig()
    data = _read_json_object(path)
    hosts = tuple(sorted(str(host) for host in data.get("hosts") or ()))
    current = str(data.get("current_host") or (hosts[0] if hosts else "algo-1"))
    if not hosts:
        hosts = (current,)
    if current not in hosts:
        raise ConfigError(f"{path}: current_host {current!r} is not in hosts {list(hosts)}; fix the file")
    return ResourceConfig(current, hosts, str(data.get("network_interface_name") or "eth0"))


def require_channel(opt_ml: OptMl, name: str = TRAIN_CHANNEL) -> Path:
    """The channel folder, or a DatasetError naming the usual causes when it is missing or empty."""
    channel = opt_ml.channel_dir(name)
    if not channel.is_dir() or not any(channel.iterdir()):
        raise DatasetError(
            f"{channel}: the '{name}' channel is empty; check the job's channel name, that the S3 prefix holds the "
            "dataset (ending in '/'), and that the job's role may read it"
        )
    return channel


def find_dataset_config(channel: Path) -> Path | None:
    """The recipe's ``kohya-sdxl-config.toml`` at the top of the channel, if the dataset ships one."""
    candidate = channel / DATASET_CONFIG_NAME
    return candidate if candidate.is_file() else None


def find_training_config(opt_ml: OptMl, channel: Path) -> Path | None:
    """The training TOML of the job: the ``config`` channel's (an explicit ``--config`` the pipeline shipped)
    wins over the one inside the dataset channel."""
    folder = opt_ml.channel_dir(CONFIG_CHANNEL)
    tomls = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    if len(tomls) > 1:
        raise DatasetError(
            f"{folder}: the '{CONFIG_CHANNEL}' channel holds {len(tomls)} .toml files; "
            "it must hold exactly the one training config"
        )
    return tomls[0] if tomls else find_dataset_config(channel)


def failure_text(cause: str, detail: str = "") -> str:
    """Cause first (one line), then as much of the detail's *tail* as fits in FAILURE_LIMIT characters."""
    cause = " ".join(cause.split()) or "training failed"
    if len(cause) >= FAILURE_LIMIT:
        return cause[: FAILURE_LIMIT - 1] + "…"
    room = FAILURE_LIMIT - len(cause) - 1
    detail = detail.strip()
    if not detail or room <= 0:
        return cause
    if len(detail) > room:
        detail = "…" + detail[-(room - 1) :]
    return f"{cause}\n{detail}"


def write_failure(opt_ml: OptMl, cause: str, detail: str = "") -> Path:
    """Write ``output/failure`` atomically (cause first, at most FAILURE_LIMIT characters) and return its path."""
    path = opt_ml.failure_file
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, failure_text(cause, detail))
    return path


def normalise_s3_prefix(url: str) -> str:
    """An ``s3://`` dataset prefix ending in ``/``: without it SageMaker also pulls ``0001-dataset-old/...``."""
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise DatasetError(f"{url}: not an s3:// prefix; give s3://BUCKET/NNNN-dataset/")
    return url if url.endswith("/") else url + "/"
