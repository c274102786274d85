"""The pipeline's evaluate step on a real short run (tiny SDXL, two step checkpoints and the final file, tiny
random-weight CLIP/DINOv2): the recommended checkpoint is published under the run's name with its measures in
publish.json and in its `ss_lorapipe_eval_*` metadata, sidecars and registry hashes matching the rewritten bytes;
`--publish-checkpoint final` and a missing metric model behave as documented."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
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


def _run(world, name: str, *extra: str) -> tuple[int, str, Path, Path]:
    output, loras = world["root"] / name / "published", world["root"] / name / "loras"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
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
    run_id = printed.getvalue().splitlines()[0].split()[1]
    return code, run_id, output / run_id, loras


@pytest.fixture(scope="module")
def recommended(world):
    """The default run: trained, evaluated, the recommended checkpoint published."""
    return _run(world, "recommended")


def test_recommended_checkpoint_is_published_with_its_measures(world, recommended):
    code, run_id, published, loras = recommended
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


def test_final_checkpoint_when_asked(world):
    code, run_id, published, loras = _run(world, "final", "--publish-checkpoint", "final")
    record = RunStore(world["home"] / "runs.sqlite").get(run_id)
    assert code == 0, record.error
    assert {s.name: s.status for s in record.steps}["train"] == "cached", "same content: training was reused"
    evaluation = json.loads((published / "publish.json").read_text())["evaluation"]
    assert evaluation["published"] == "dwjz_toy" and evaluation["publish_choice"] == "final"
    meta = read_header(loras / "dwjz_toy.safetensors").metadata
    assert meta["ss_lorapipe_eval_checkpoint"] == "dwjz_toy"
    assert meta["ss_lorapipe_eval_recommended"] == str(evaluation["recommended"] == "dwjz_toy")
    assert _sha(loras / "dwjz_toy.safetensors") == _sha(record.artifact_dir / "dwjz_toy.safetensors")


def test_missing_metric_model(world, tmp_path):
    absent = tmp_path / "no-such-clip"
    # auto: skipped with the reason, the final file published as before.
    code, run_id, published, loras = _run(world, "auto-missing", "--clip-model", str(absent))
    record = RunStore(world["home"] / "runs.sqlite").get(run_id)
    evaluate = {s.name: s for s in record.steps}["evaluate"]
    assert code == 0 and evaluate.status == "skipped" and str(absent) in evaluate.detail
    assert "evaluation" not in json.loads((published / "publish.json").read_text())
    assert "ss_lorapipe_eval_checkpoint" not in read_header(loras / "dwjz_toy.safetensors").metadata
    # on: the run fails at the evaluate step, naming the model, and publishes nothing.
    code, run_id, published, loras = _run(world, "on-missing", "--evaluate", "on", "--clip-model", str(absent))
    record = RunStore(world["home"] / "runs.sqlite").get(run_id)
    evaluate = {s.name: s for s in record.steps}["evaluate"]
    assert code != 0 and record.status == "failed" and evaluate.status == "failed"
    assert str(absent) in record.error and "--clip-model" in record.error
    assert not (loras / "dwjz_toy.safetensors").exists()


def test_a_refused_final_checkpoint_is_not_published(world, recommended, tmp_path):
    """--publish-checkpoint final when the generator refuses the final file: the step fails naming it (the other
    checkpoints were still scored) instead of publishing a file nobody can load."""
    from safetensors.torch import load_file, save_file

    from lorapipe.errors import PipelineError
    from lorapipe.pipeline.artifact import find_artifact
    from lorapipe.pipeline.evaluate_stage import EvaluateOptions, evaluate_artifact
    from lorapipe.pipeline.runlog import RunLog

    _code, run_id, _published, _loras = recommended
    folder = shutil.copytree(RunStore(world["home"] / "runs.sqlite").get(run_id).artifact_dir, tmp_path / "train")
    final = folder / "dwjz_toy.safetensors"
    tensors = load_file(final)
    down = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[down] = tensors[down][:, :-1].contiguous()  # does not fit the base model any more
    save_file(tensors, final, metadata=dict(read_header(final).metadata))
    options = EvaluateOptions(
        mode="on", publish="final", clip_model=str(world["clip"]), dino_model=str(world["dino"]), steps=1
    )
    log = RunLog(tmp_path / "run.log")
    with pytest.raises(PipelineError, match=rf"{re.escape(str(final))}: the final checkpoint was refused"):
        evaluate_artifact(
            find_artifact(folder),
            options,
            dataset_dir=world["dataset"],
            base_model=str(world["model"]),
            out_dir=tmp_path / "eval",
            log=log,
        )
    assert "evaluate: skipped dwjz_toy: the generator refused it" in (tmp_path / "run.log").read_text()
