"""What a run was asked to do (a frozen request stored with the run) and where runs live on this machine."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from lorapipe.errors import PipelineError
from lorapipe.pipeline.backend import BACKENDS, DEFAULT_BACKEND
from lorapipe.pipeline.evaluate_stage import EvaluateOptions

HOME_ENV = "LORAPIPE_HOME"


@dataclass(frozen=True)
class SageMakerOptions:
    """The recipe's training-job knobs plus what a real job needs (role, region, checkpoints, spot)."""

    image: str | None = None
    role_arn: str | None = None
    instance_type: str = "ml.g5.4xlarge"
    instance_count: int = 1
    volume_size_gb: int = 50
    max_runtime_s: int = 86400
    spot: bool = False
    max_wait_s: int | None = None
    region: str | None = None
    endpoint_url: str | None = None
    poll_interval_s: float = 30.0


@dataclass(frozen=True)
class RunRequest:
    """Everything `lorapipe pipeline run` was given; stored as JSON with the run so a worker can replay it."""

    dataset: str
    base_model: str | None = None
    output: str | None = None
    backend: str = DEFAULT_BACKEND
    config: str | None = None
    overrides: tuple[str, ...] = ()
    lora_dir: str | None = None
    lora_name: str | None = None
    s3_endpoint_url: str | None = None
    use_cache: bool = True
    sagemaker: SageMakerOptions = field(default_factory=SageMakerOptions)
    deploy_endpoint: str | None = None  # after publish, add the LoRA to this SageMaker endpoint
    evaluate: EvaluateOptions = field(default_factory=EvaluateOptions)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise PipelineError(f"--backend {self.backend!r}: unknown backend; use one of {', '.join(BACKENDS)}")
        if BACKENDS[self.backend].remote and not (self.output or "").startswith("s3://"):
            raise PipelineError(
                f"--output: the {self.backend} backend writes to S3 (and uploads a local dataset "
                "there); give --output s3://BUCKET/PREFIX"
            )

    @property
    def uploads_dataset(self) -> bool:
        """A local dataset for a remote backend (sagemaker): uploaded under --output before the job starts."""
        return BACKENDS[self.backend].remote and not self.dataset.startswith("s3://")

    @property
    def dataset_name(self) -> str:
        return self.dataset.rstrip("/").rsplit("/", 1)[-1]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunRequest:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["overrides"] = tuple(values.get("overrides") or ())
        values["sagemaker"] = SageMakerOptions(**(values.get("sagemaker") or {}))
        values["evaluate"] = EvaluateOptions(**(values.get("evaluate") or {}))
        return cls(**values)


@dataclass(frozen=True)
class PipelineHome:
    """The folder holding the run database, run folders, the dataset cache and the default LoRA folder."""

    root: Path

    @classmethod
    def resolve(cls, root: str | os.PathLike[str] | None = None) -> PipelineHome:
        chosen = root or os.environ.get(HOME_ENV) or Path.home() / ".lorapipe"
        return cls(Path(chosen).expanduser().resolve())

    @property
    def database(self) -> Path:
        return self.root / "runs.sqlite"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    @property
    def dataset_cache(self) -> Path:
        return self.root / "cache" / "datasets"

    @property
    def default_lora_dir(self) -> Path:
        return self.root / "loras"
