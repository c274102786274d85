"""Error types the CLI turns into one-line messages and exit codes.

Library code raises these; only `lorapipe.cli` decides how to exit. Each message names the file, key or field at
fault and says what to do instead, so users never need a traceback to fix their input.
"""


class LorapipeError(Exception):
    """Base for every error meant for the user: its text is the whole message."""

    exit_code = 2


class ModelLoadError(LorapipeError):
    """A base model path, hub id or checkpoint that cannot be loaded as SDXL."""


class ConfigError(LorapipeError):
    """A Kohya config key that is unknown, has the wrong type or an impossible value."""


class DatasetError(LorapipeError):
    """A dataset folder, bucket or file that breaks Kohya's layout rules or cannot be read."""


class StoreError(LorapipeError):
    """A store (local folder or S3 bucket) that cannot be reached, listed or written."""


class TrainingError(LorapipeError):
    """Training stopped: non-finite loss, out of memory, refused resume."""


class GenerationError(LorapipeError):
    """A generation request that cannot be served (bad LoRA name, bad sampler, bad size)."""


class PipelineError(LorapipeError):
    """A pipeline run that cannot start or was refused by its backend."""


class DeployError(LorapipeError):
    """A SageMaker endpoint that cannot be created, updated, deleted or invoked."""


class EvaluationError(LorapipeError):
    """Checkpoints, prompts or metric models that an evaluation cannot use."""
