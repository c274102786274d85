"""The pipeline's evaluate step on a real short run (tiny SDXL, two step checkpoints and the final file, tiny
random-weight CLIP/DINOv2): the recommended checkpoint is published under the run's name with its measures in
publish.json and in its `ss_lorapipe_eval_*` metadata, sidecars and registry hashes matching the rewritten bytes;
`--publish-checkpoint final` and a missing metric model behave as documented."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from lorapipe.cli.main import main
from lorapipe.pipeline.records import RunStore
from lorapipe.safetensors_header import read_header

TRAIN = (
    "--set",
    "max_train_steps=4",
    "--set",
    "save_every_n_steps=2",
    "--set",
    "save_every_n_epochs=0",
    "--set",
    "sample_every_n_steps=0",
)
FAST_EVAL = ("--eval-steps", "2", "--eval-images-per-prompt", "1")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory, sample_dataset_dir, tiny_model_dir, tiny_metric_models):
    root = tmp_path_factory.mktemp("pipeline-eval")
    clip, dino = tiny_metric_models
    return {
        "home": root / "home",
        "dataset": shutil.copytree(sample_dataset_dir, root / "datasets" / "0001-dataset"),
        "model": tiny_model_dir,
        "root": root,
        "clip": clip,
        "dino": dino,
    }


def _run(world, name: str, *extra: str, capsys) -> tuple[int, str, Path, Path]:
    output, loras = world["root"] / name / "published", world["root"] / name / "loras"
    code = main(
        [
            "pipeline",
            "run",
            str(world["dataset"]),
            "--foreground",
            "--home",
            str(world["home"]),
            "--base-model",
            str(world["model"]),
            "--output",
            str(output),
            "--lora-dir",
            str(loras),
            *TRAIN,
            "--clip-model",
            str(world["clip"]),
            "--dino-model",
            str(world["dino"]),
            *FAST_EVAL,
            *extra,
        ]
    )
    run_id = capsys.readouterr().out.splitlines()[0].split()[1]
    return code, run_id, output / run_id, loras


def test_recommended_checkpoint_is_published_with_its_measures(world, capsys):
    code, run_id, published, loras = _run(world, "recommended", capsys=capsys)
    record = RunStore(world["home"] / "runs.sqlite").get(run_id)
    assert code == 0 and record.status == "succeeded", record.error
    assert {s.name: s.status for s in record.steps}["evaluate"] == "succeeded"

    manifest = json.loads((published / "publish.json").read_text())
    evaluation = manifest["evaluation"]
    labels = [c["checkpoint"] for c in evaluation["checkpoints"]]
    assert labels == ["no LoRA", "dwjz_toy-step00000002", "dwjz_toy-step00000004", "dwjz_toy"]
    assert evaluation["published"] == evaluation["recommended"] in labels[1:]
    assert json.loads((record.run_dir / "publish.json").read_text())["evaluation"] == evaluation
    assert (record.run_dir / "eval" / "eval.html").is_file() and (record.run_dir / "eval" / "eval.json").is_file()

    chosen = record.artifact_dir / f"{evaluation['published']}.safetensors"
    served = loras / "dwjz_toy.safetensors"  # the run's name, whichever checkpoint it is
    assert _sha(served) == _sha(chosen) == manifest["sha256"][chosen.name]
    assert (published / chosen.name).is_file()
    assert (published / f"{chosen.name}.sha256").read_text().split()[0] == _sha(chosen)
    header = read_header(served)
    meta = header.metadata
    assert meta["ss_lorapipe_eval_checkpoint"] == evaluation["published"]
    assert meta["ss_lorapipe_eval_recommended"] == "True"
    row = evaluation["checkpoints"][labels.index(evaluation["published"])]
    for key in ("dino_i", "clip_i", "clip_t", "leakage"):
        assert float(meta[f"ss_lorapipe_eval_{key}"]) == pytest.approx(row[key], abs=1e-4)
    assert float(meta["ss_lorapipe_eval_no_lora_dino_i"]) == pytest.approx(
        evaluation["checkpoints"][0]["dino_i"], abs=1e-4
    )
    assert json.loads(meta["ss_lorapipe_eval_models"]) == {"clip": str(world["clip"]), "dino": str(world["dino"])}
    assert meta["ss_output_name"] == "dwjz_toy" and meta["ss_network_module"] == "networks.lora"
    # The writer recomputed sd-scripts' hash over the tensor data, which the metadata rewrite left untouched.
    data = served.read_bytes()[header.data_offset :]
    assert meta["sshs_model_hash"] == hashlib.sha256(data).hexdigest()
    local = json.loads((record.run_dir / "publish.json").read_text())  # the registry entry is added after upload
    assert local["registry"]["sha256_tensors"] == hashlib.sha256(data).hexdigest()


def test_final_checkpoint_when_asked(world, capsys):
    code, run_id, published, loras = _run(world, "final", "--publish-checkpoint", "final", capsys=capsys)
    record = RunStore(world["home"] / "runs.sqlite").get(run_id)
    assert code == 0, record.error
    assert {s.name: s.status for s in record.steps}["train"] == "cached", "same content: training was reused"
    evaluation = json.loads((published / "publish.json").read_text())["evaluation"]
    assert evaluation["published"] == "dwjz_toy" and evaluation["publish_choice"] == "final"
    meta = read_header(loras / "dwjz_toy.safetensors").metadata
    assert meta["ss_lorapipe_eval_checkpoint"] == "dwjz_toy"
    assert meta["ss_lorapipe_eval_recommended"] == str(evaluation["recommended"] == "dwjz_toy")
    assert _sha(loras / "dwjz_toy.safetensors") == _sha(record.artifact_dir / "dwjz_toy.safetensors")


def test_missing_metric_model(world, capsys, tmp_path):
    absent = tmp_path / "no-such-clip"
    # auto: skipped with the reason, the final file published as before.
    code, run_id, published, loras = _run(world, "auto-missing", "--clip-model", str(absent), capsys=capsys)
    record = RunStore(world["home"] / "runs.sqlite").get(run_id)
    evaluate = {s.name: s for s in record.steps}["evaluate"]
    assert code == 0 and evaluate.status == "skipped" and str(absent) in evaluate.detail
    assert "evaluation" not in json.loads((published / "publish.json").read_text())
    assert "ss_lorapipe_eval_checkpoint" not in read_header(loras / "dwjz_toy.safetensors").metadata
    # on: the run fails at the evaluate step, naming the model, and publishes nothing.
    code, run_id, published, loras = _run(
        world, "on-missing", "--evaluate", "on", "--clip-model", str(absent), capsys=capsys
    )
    record = RunStore(world["home"] / "runs.sqlite").get(run_id)
    evaluate = {s.name: s for s in record.steps}["evaluate"]
    assert code != 0 and record.status == "failed" and evaluate.status == "failed"
    assert str(absent) in record.error and "--clip-model" in record.error
    assert not (loras / "dwjz_toy.safetensors").exists()
