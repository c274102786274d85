"""`load_train_config`: Kohya training TOML + dataset_config + `--set` + CLI flags -> one validated `TrainConfig`.

Precedence, lowest first: sd-scripts defaults, the TOML file, `--set key=value`, the CLI flags `--output-dir` and
`--base-model`. Every problem is collected and reported together (`ConfigProblems`), each naming key and file.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lorapipe.config import keys as k
from lorapipe.config.checks import apply_implied, check_config
from lorapipe.config.gui import LYCORIS_MODULE, apply_gui_rules
from lorapipe.config.lycoris_args import parse_lycoris_args
from lorapipe.config.model import LoadedConfig, TrainConfig, kohya_fields
from lorapipe.config.network_args import parse_network_args, parse_optimizer_args
from lorapipe.config.read import SET_SOURCE, parse_overrides, read_training_toml
from lorapipe.config.values import ValueProblem, coerce, is_off
from lorapipe.dataset.blueprint import DATASET_KEYS
from lorapipe.dataset.build import blueprint_from_args
from lorapipe.errors import ConfigError, DatasetError
from lorapipe.file_names import DATASET_CONFIG_NAME

DEFAULT_OUTPUT_FOLDER = "output"
SAGEMAKER_ROOT = "/opt/ml/"
SAGEMAKER_TRAIN_CHANNEL = "/opt/ml/input/data/train"


class ConfigProblems(ConfigError):
    """Several config errors at once; `str()` has one line per error, `errors`/`warnings` keep them apart."""

    def __init__(self, errors: Sequence[str], warnings: Sequence[str] = ()):
        self.errors = tuple(errors)
        self.warnings = tuple(warnings)
        super().__init__("\n".join(self.errors))


def default_output_dir(dataset_dir: Path) -> Path:
    """Where a run writes when neither the config (outside SageMaker) nor --output-dir says: beside the dataset,
    `<parent>/output/<dataset folder name>`, so datasets sharing a root never mix their files."""
    dataset_dir = Path(dataset_dir).absolute()
    return dataset_dir.parent / DEFAULT_OUTPUT_FOLDER / dataset_dir.name


def load_train_config(
    dataset_dir: Path,
    *,
    config_path: Path | None = None,
    overrides: Sequence[str] = (),
    output_dir: Path | None = None,
    base_model: str | None = None,
    for_training: bool = True,
) -> LoadedConfig:
    """Read, validate and resolve a Kohya training config for `dataset_dir`; raises `ConfigProblems`.

    `for_training=False` (`lorapipe config check`) reports what only a training run needs and is not there (the
    base model, `network_weights`, `resume`) as warnings: a kohya_ss GUI preset carries no base model and sometimes
    its author's own paths, which the user replaces before training, as in the GUI. `train` refuses them.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(
            f"{dataset_dir}: dataset folder does not exist; pass the folder holding "
            f"{DATASET_CONFIG_NAME} and the <repeats>_<name> folders"
        )
    if config_path is None and not (dataset_dir / DATASET_CONFIG_NAME).exists():
        from lorapipe.dataset.prepare import unprepared_hint

        hint = unprepared_hint(dataset_dir)
        if hint:
            raise DatasetError(hint)
    config_path = Path(config_path) if config_path is not None else dataset_dir / DATASET_CONFIG_NAME
    raw = read_training_toml(config_path)
    values = dict(raw.values)
    origins = dict(raw.origins)
    for key, value in parse_overrides(overrides).items():
        values[key] = value
        origins[key] = SET_SOURCE
    builder = _Builder(config_path, dataset_dir, origins, list(raw.warnings), for_training=for_training)
    config = builder.build(values, output_dir=output_dir, base_model=base_model)
    if builder.errors:
        raise ConfigProblems(builder.errors, builder.warnings)
    return LoadedConfig(config=config, warnings=tuple(builder.warnings))


class _Builder:
    """Collects errors and warnings while turning raw key/values into a TrainConfig (one per load)."""

    def __init__(
        self, config_path: Path, dataset_dir: Path, origins: dict[str, str], warnings: list[str], *, for_training: bool
    ):
        self.config_path = config_path
        self.for_training = for_training
        self.config_dir = config_path.absolute().parent
        self.dataset_dir = dataset_dir
        self.origins = origins
        self.errors: list[str] = []
        self.warnings: list[str] = warnings

    def where(self, key: str) -> str:
        return self.origins.get(key, str(self.config_path))

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.where(key)}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.where(key)}: {message}")

    def training_input(self, key: str, message: str) -> None:
        """Something a training run needs and lacks: an error for `train`, a warning for `config check`."""
        if self.for_training:
            self.error(key, message)
        else:
            self.warn(key, f"{message} (`lorapipe train` refuses this)")

    # -- the steps, in order
    def build(self, values: dict[str, Any], *, output_dir: Path | None, base_model: str | None) -> TrainConfig:
        gui = apply_gui_rules(values, self.origins, str(self.config_path))
        self.origins = gui.origins
        self.errors.extend(gui.errors)
        self.warnings.extend(gui.warnings)
        values = self._classify(gui.values)
        te_lr = values.get("text_encoder_lr")
        if isinstance(te_lr, (list, tuple)) and len(set(te_lr)) > 1:
            self.warn(
                "text_encoder_lr",
                f"text_encoder_lr = {te_lr!r}: networks.lora uses the first value for "
                f"both text encoders (as sd-scripts does)",
            )
        fields = kohya_fields()
        kwargs: dict[str, Any] = {}
        for key, item in fields.items():
            if key not in values:
                continue
            try:
                kwargs[key] = coerce(values[key], item)
            except ValueProblem as problem:
                self.error(key, f"{key} {problem}")
        self._normalise_choices(kwargs)
        self._names_and_length(kwargs)
        self._network(kwargs)
        self._paths(kwargs, output_dir=output_dir, base_model=base_model)
        dataset = self._dataset(values)
        config = TrainConfig(**kwargs, dataset=dataset, source=str(self.config_path), dataset_dir=self.dataset_dir)
        config, notes = apply_implied(config)
        self.warnings.extend(f"{self.config_path}: {note}" for note in notes)
        if not self.errors:
            errors, warnings = check_config(config)
            self.errors.extend(f"{self.config_path}: {e}" for e in errors)
            self.warnings.extend(f"{self.config_path}: {w}" for w in warnings)
        return config

    def _classify(self, values: dict[str, Any]) -> dict[str, Any]:
        """Keep supported/dataset keys, translate mapped ones, warn on ignored, refuse rejected and unknown."""
        kept: dict[str, Any] = {}
        mapped: list[tuple[str, Any]] = []
        for key, value in values.items():
            spec = k.KEY_TABLE.get(key)
            if spec is None:
                self.error(
                    key,
                    f"{key}: unknown key{_suggest(key)}; remove it or fix the spelling "
                    f"(`lorapipe config keys` lists every key)",
                )
            elif spec.status in (k.SUPPORTED, k.DATASET):
                kept[key] = value
            elif spec.status == k.MAPPED:
                mapped.append((key, value))
            elif spec.status == k.IGNORED:
                self._ignored(spec, value)
            elif spec.status == k.REJECTED and not is_off(value):
                self.error(key, f"{key} = {value!r}: {spec.reason}; remove it")
        for key, value in mapped:
            self._mapped(k.KEY_TABLE[key], value, kept)
        return kept

    def _ignored(self, spec: k.KeySpec, value: Any) -> None:
        if spec.name == "xformers" and isinstance(value, str) and not is_off(value):
            self.warn(
                spec.name,
                f"xformers = {value!r} is the kohya_ss GUI form (sd-scripts wants true/false); ignored: {spec.reason}",
            )
        elif spec.gui or not is_off(value):
            self.warn(spec.name, f"{spec.name} ignored: {spec.reason}")

    def _mapped(self, spec: k.KeySpec, value: Any, kept: dict[str, Any]) -> None:
        target = spec.maps_to or ""
        if spec.name in ("use_8bit_adam", "use_lion_optimizer"):
            if is_off(value):
                return
            value = "AdamW8bit" if spec.name == "use_8bit_adam" else "Lion"
        elif is_off(value):
            return
        if target in kept and kept[target] != value and not is_off(kept[target]):
            self.error(
                spec.name,
                f"{spec.name} = {value!r} contradicts {target} = {kept[target]!r} "
                f"({self.where(target)}); keep only {target}",
            )
            return
        kept[target] = value
        self.origins.setdefault(target, self.where(spec.name))
        self.warn(spec.name, f"{spec.name}: {spec.reason}; read as {target} = {value!r}")

    def _normalise_choices(self, kwargs: dict[str, Any]) -> None:
        def choose(key: str, allowed: Sequence[str], hint: str = "") -> None:
            value = kwargs.get(key)
            if value is None:
                return
            lowered = value.strip().lower()
            if lowered in allowed:
                kwargs[key] = lowered
            else:
                self.error(key, f"{key} = {value!r} is not one of {', '.join(allowed)}{hint}")

        choose("mixed_precision", k.MIXED_PRECISIONS)
        choose("save_precision", k.SAVE_PRECISIONS)
        choose("loss_type", k.LOSS_TYPES)
        choose("huber_schedule", k.HUBER_SCHEDULES)
        choose("sample_sampler", k.SAMPLE_SAMPLERS)
        choose("log_with", k.LOG_WITH)
        self._wandb(kwargs)
        choose("dynamo_backend", k.DYNAMO_BACKENDS + ("no",))
        self._optimizer(kwargs)
        self._scheduler(kwargs)
        self._save_model_as(kwargs)

    def _wandb(self, kwargs: dict[str, Any]) -> None:
        """log_with = "wandb" logs to wandb (offline) when the package is installed; otherwise a warning."""
        if kwargs.get("log_with") == "wandb" and importlib.util.find_spec("wandb") is None:
            fallback = "TensorBoard" if kwargs.get("logging_dir") else "no tracker"
            self.warn(
                "log_with",
                f'log_with = "wandb": the wandb package is not installed; using {fallback} '
                f"(pip install wandb to log there)",
            )
            kwargs["log_with"] = "tensorboard" if kwargs.get("logging_dir") else None

    def _names_and_length(self, kwargs: dict[str, Any]) -> None:
        name = kwargs.get("output_name")
        if name is not None and (not name.strip() or "/" in name or "\\" in name or name in (".", "..")):
            self.error(
                "output_name",
                f"output_name = {name!r} must be a plain file name (no folders); put the folder in output_dir",
            )
        if kwargs.get("max_train_epochs") and "max_train_steps" in kwargs:
            self.warn(
                "max_train_epochs",
                f"max_train_epochs = {kwargs['max_train_epochs']} overrides "
                f"max_train_steps = {kwargs['max_train_steps']} (as in sd-scripts)",
            )

    def _optimizer(self, kwargs: dict[str, Any]) -> None:
        if "optimizer_args" in kwargs:
            try:
                parse_optimizer_args(kwargs["optimizer_args"])
            except ValueProblem as problem:
                self.error("optimizer_args", f"optimizer_args {problem}")
        name = kwargs.get("optimizer_type")
        if name is None:
            return
        text = name.strip()
        if not text:
            kwargs["optimizer_type"] = "AdamW"  # sd-scripts: "" means AdamW
        elif text.lower() in k.OPTIMIZERS:
            kwargs["optimizer_type"] = k.OPTIMIZERS[text.lower()]
        elif text.lower() in (name.lower() for name in k.OPTIMIZERS_UNAVAILABLE):
            self.error(
                "optimizer_type",
                f"optimizer_type = {name!r} (schedule-free) is known to sd-scripts but not "
                f"available in lorapipe; use AdamW, Adafactor or Prodigy",
            )
        elif "." in text:
            kwargs["optimizer_type"] = text  # a module.Class path, as sd-scripts allows
        else:
            close = difflib.get_close_matches(text, list(k.OPTIMIZERS.values()), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.error(
                "optimizer_type",
                f"optimizer_type = {name!r} is unknown{hint}; use one of "
                f"{', '.join(k.OPTIMIZERS.values())} or a module.Class path",
            )

    def _scheduler(self, kwargs: dict[str, Any]) -> None:
        name = kwargs.get("lr_scheduler")
        if name is None:
            return
        text = name.strip().lower()
        base, _, arg = text.partition(":")
        if base not in k.LR_SCHEDULERS or (arg and base != "adafactor"):
            self.error("lr_scheduler", f"lr_scheduler = {name!r} is not one of {', '.join(k.LR_SCHEDULERS)}")
            return
        kwargs["lr_scheduler"] = text

    def _save_model_as(self, kwargs: dict[str, Any]) -> None:
        value = kwargs.get("save_model_as")
        if value is None:
            return
        if value.strip().lower() == "safetensors":
            kwargs["save_model_as"] = "safetensors"
        else:
            self.error(
                "save_model_as",
                f"save_model_as = {value!r}: lorapipe writes LoRA files as .safetensors "
                f"only (the format that carries Kohya's metadata and hashes); set "
                f'save_model_as = "safetensors"',
            )

    def _network(self, kwargs: dict[str, Any]) -> None:
        module = (kwargs.get("network_module") or "").strip() or None
        if module is not None and module not in k.NETWORK_MODULES:
            self.error(
                "network_module",
                f"network_module = {module!r}: lorapipe trains networks.lora (LoRA, and "
                f"LoCon via network_args conv_dim) and lycoris.kohya (LoCon, LoHa, LoKr, "
                f"DoRA); set one of them",
            )
        if module is not None:
            kwargs["network_module"] = module
        if module == LYCORIS_MODULE:
            self._lycoris(kwargs)
            return
        args = kwargs.get("network_args", ())
        parsed = parse_network_args(args)
        for problem in parsed.errors:
            self.error("network_args", f"network_args {problem}")
        for note in parsed.warnings:
            self.warn("network_args", f"network_args {note}")
        kwargs["conv_dim"] = parsed.conv_dim
        kwargs["conv_alpha"] = parsed.conv_alpha
        kwargs["network_options"] = parsed.options
        if "network_dropout" not in kwargs and parsed.dropout is not None:
            self.warn("network_args", "network_args dropout is ignored by networks.lora; use network_dropout")

    def _lycoris(self, kwargs: dict[str, Any]) -> None:
        parsed = parse_lycoris_args(kwargs.get("network_args", ()))
        for problem in parsed.errors:
            self.error("network_args", f"network_args (lycoris.kohya) {problem}")
        for note in parsed.warnings:
            self.warn("network_args", f"network_args (lycoris.kohya) {note}")
        kwargs["lycoris"] = parsed.options
        if kwargs.get("network_dropout"):  # sd-scripts hands it to LyCORIS as neuron_dropout, which LyCORIS never reads
            self.warn(
                "network_dropout",
                f"network_dropout = {kwargs['network_dropout']} is ignored by lycoris.kohya (as under sd-scripts); "
                f'LyCORIS reads its dropout from network_args: "dropout={kwargs["network_dropout"]}"',
            )

    # -- paths
    def _paths(self, kwargs: dict[str, Any], *, output_dir: Path | None, base_model: str | None) -> None:
        if base_model:
            kwargs["pretrained_model_name_or_path"] = str(base_model)
        elif kwargs.get("pretrained_model_name_or_path"):
            kwargs["pretrained_model_name_or_path"] = self._input_path(kwargs["pretrained_model_name_or_path"])
        else:
            self.training_input(
                "pretrained_model_name_or_path",
                "pretrained_model_name_or_path is missing; set it to an "
                "SDXL base model (folder, file or hub id) or pass --base-model",
            )
        kwargs["output_dir"] = str(self._output_dir(kwargs.get("output_dir"), output_dir))
        for key in ("vae", "network_weights", "resume", "sample_prompts"):
            if kwargs.get(key):
                kwargs[key] = self._input_path(kwargs[key], key=key)
        for key, must_exist in (("network_weights", True), ("resume", True), ("sample_prompts", False)):
            value = kwargs.get(key)
            if value and not Path(value).exists():
                message = f"{key}: {value} does not exist"
                if must_exist:
                    self.training_input(key, message + "; fix the path or remove the key")
                else:
                    self.warn(key, message + "; no sample images will be made")
        if kwargs.get("logging_dir"):
            kwargs["logging_dir"] = str(
                self._output_side(kwargs["logging_dir"], Path(kwargs["output_dir"]), "logs", "logging_dir")
            )

    def _input_path(self, value: str, *, key: str | None = None) -> str:
        """Relative -> beside the config file when something is there; SageMaker train-channel paths -> dataset."""
        if value.startswith(SAGEMAKER_TRAIN_CHANNEL + "/") and not Path(value).exists():
            local = self.dataset_dir / Path(value).relative_to(SAGEMAKER_TRAIN_CHANNEL)
            if key:
                self.warn(key, f"{key} '{value}' exists only inside SageMaker; using {local}")
            return str(local)
        path = Path(value).expanduser()
        if not path.is_absolute() and (self.config_dir / path).exists():
            return str(self.config_dir / path)
        return str(path) if path.exists() else value

    def _output_dir(self, configured: str | None, cli: Path | None) -> Path:
        if cli is not None:
            return Path(cli).absolute()
        fallback = default_output_dir(self.dataset_dir)
        if not configured:
            return fallback
        return self._output_side(configured, fallback, None, "output_dir")

    def _output_side(self, configured: str, fallback: Path, sub: str | None, key: str) -> Path:
        path = Path(configured).expanduser()
        if configured.startswith(SAGEMAKER_ROOT) and not path.exists():
            local = fallback / sub if sub else fallback
            self.warn(
                key,
                f"{key} '{configured}' exists only inside SageMaker; writing to {local} (pass --output-dir to choose)",
            )
            return local
        return path if path.is_absolute() else self.config_dir / path

    # -- dataset
    def _dataset(self, values: Mapping[str, Any]) -> Any:
        args = {key: value for key, value in values.items() if key in DATASET_KEYS}
        for key in ("train_data_dir", "reg_data_dir", "dataset_config"):
            value = args.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                if (self.config_dir / value).exists():
                    args[key] = str(self.config_dir / value)
        try:
            blueprint = blueprint_from_args(args, source=str(self.config_path), dataset_dir=self.dataset_dir)
        except (ConfigError, DatasetError) as exc:
            self.errors.append(str(exc))
            return None
        for note in getattr(blueprint, "notes", ()):
            prefix = "dataset error: " if note.severity == "error" else ""
            self.warnings.append(f"{note.path}: {prefix}{note.reason}")
        return blueprint


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(k.KEY_TABLE), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""
