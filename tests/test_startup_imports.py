"""A plain local `lorapipe generate` / `lorapipe train` imports only what its options need: no server, cloud
pipeline, S3 or TensorBoard code (start-up time and memory), checked by the modules loaded, not by timings."""

import json
import subprocess
import sys

# Packages and lorapipe modules that a local run without logging_dir, sample prompts or cloud options never needs.
# (lorapipe.train.sampling is not among them: it also reads the sample_prompts file, which every run checks before
# loading models; it imports torch and diffusers only where it renders.)
NOT_FOR_PLAIN_RUNS = (
    "lorapipe.server",
    "lorapipe.pipeline",
    "lorapipe.train.sagemaker_entry",
    "fastapi",
    "uvicorn",
    "starlette",
    "s3fs",
    "tensorboard",
    "torch.utils.tensorboard",
)

# One interpreter runs the commands in turn (one start-up instead of two) and lists sys.modules after each.
_PROBE = """
import json, sys
from lorapipe.cli.main import main
listing, commands = sys.argv[1], json.loads(sys.argv[2])
seen = []
for argv in commands:
    if main(argv) != 0:
        sys.exit(f"lorapipe {argv[0]} failed")
    seen.append(sorted(sys.modules))
with open(listing, "w") as handle:
    json.dump(seen, handle)
"""


def _within(modules: set[str], names) -> list[str]:
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in names))


def test_plain_generate_and_train_import_no_server_cloud_or_tensorboard(tmp_path, tiny_model_dir, sample_dataset_dir):
    (tmp_path / "loras").mkdir()
    generate = [
        "generate",
        "a toy",
        "--base-model",
        str(tiny_model_dir),
        "--lora-dir",
        str(tmp_path / "loras"),
        "-o",
        str(tmp_path / "out.png"),
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--device",
        "cpu",
    ]
    train = [
        "train",
        str(sample_dataset_dir),
        "--base-model",
        str(tiny_model_dir),
        "--output-dir",
        str(tmp_path / "out"),
        "--no-progress",
        "--set",
        "max_train_steps=1",
        "--set",
        'sample_prompts=""',
        "--set",
        "sample_every_n_steps=0",
        "--set",
        "save_every_n_epochs=0",
    ]
    listing = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(listing), json.dumps([generate, train])],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    after_generate, after_train = (set(m) for m in json.loads(listing.read_text()))
    assert "lorapipe.generate.generator" in after_generate and (tmp_path / "out.png").is_file()
    assert _within(after_generate, NOT_FOR_PLAIN_RUNS + ("lorapipe.train",)) == []
    assert "lorapipe.train.loop" in after_train and (tmp_path / "out" / "train_summary.json").is_file()
    assert _within(after_train, NOT_FOR_PLAIN_RUNS) == []
