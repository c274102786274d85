"""`import lorapipe` and `lorapipe --help` stay light, and modules import only from upstream stages."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lorapipe"
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")

# Stage order (docs/architecture.md): a module may import only from stages before it in this table.
# The neutral modules sit upstream of every stage: errors, stdlib-only atomic writes, the safetensors header reader,
# the file hashes, the file names several stages share.
NEUTRAL = {"errors", "atomic", "safetensors_header", "hashes", "file_names"}
ALLOWED = {
    "errors": set(),
    "atomic": set(),
    "hashes": {"atomic", "file_names"},
    "file_names": set(),
    "safetensors_header": {"errors"},
    "container_contract": NEUTRAL,
    "sdxl": NEUTRAL,
    "store": NEUTRAL,
    "dataset": NEUTRAL | {"sdxl", "store"},
    "config": NEUTRAL | {"sdxl", "dataset"},
    "lora": NEUTRAL | {"sdxl"},
    "train": NEUTRAL | {"sdxl", "store", "dataset", "config", "lora", "container_contract"},
    "registry": NEUTRAL | {"lora"},
    "hosting_contract": NEUTRAL | {"store", "registry"},
    "generate": NEUTRAL | {"sdxl", "lora", "registry"},
    # Evaluation reads LoRA files and a dataset and drives the generator; it never imports the trainer.
    "evaluate": NEUTRAL | {"sdxl", "dataset", "lora", "registry", "generate"},
    "deploy": NEUTRAL | {"store", "registry", "container_contract", "hosting_contract"},
    "pipeline": NEUTRAL
    | {
        "sdxl",
        "store",
        "dataset",
        "config",
        "lora",
        "registry",
        "train",
        "container_contract",
        "hosting_contract",
        "deploy",
        "evaluate",
    },
    # The studio's routes start and follow pipeline runs and prepare datasets; the pipeline never imports the server.
    "server": NEUTRAL
    | {
        "sdxl",
        "lora",
        "registry",
        "generate",
        "store",
        "container_contract",
        "hosting_contract",
        "pipeline",
        "dataset",
        "config",
    },
}


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in sys.modules if '.' not in m)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_import_lorapipe_is_light():
    assert not _loaded_after("import lorapipe, lorapipe.errors") & set(HEAVY)


def test_help_is_light_and_lists_commands():
    loaded = _loaded_after(
        "import contextlib, io\nfrom lorapipe.cli.main import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    build_parser().format_help()"
    )
    assert not loaded & set(HEAVY)
    result = subprocess.run([sys.executable, "-m", "lorapipe", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "model" in result.stdout


def _stage(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imported_stages(path: Path) -> set[str]:
    stages = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "lorapipe" and len(parts) > 1:
                stages.add(parts[1])
    return stages


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_import_direction(stage):
    files = [p for p in SRC.rglob("*.py") if _stage(p) == stage]
    for path in files:
        bad = _imported_stages(path) - ALLOWED[stage] - {stage}
        assert not bad, f"{path.relative_to(SRC)} imports downstream stage(s) {sorted(bad)}"
