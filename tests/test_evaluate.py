"""`lorapipe eval` end to end: one short real run on the sample dataset (a tiny SDXL whose VAE was fitted to the
subject, so training can move its images), tiny random CLIP/DINOv2, the report in headless Chromium, the direction
of the measures (the trained LoRA is closer to the subject than no LoRA), and the inputs it must refuse or skip with
a message naming the file."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lorapipe.cli.main import main
from lorapipe.errors import EvaluationError
from lorapipe.evaluate.checkpoints import find_checkpoints
from lorapipe.evaluate.metrics import load_metric_models
from lorapipe.evaluate.prompts import read_prompts, subject_from_tokens
from lorapipe.evaluate.tiny import fit_tiny_vae
from lorapipe.train.run import run_training
from tests.train_fixtures import SUBSET, copy_dataset, one_thread  # noqa: F401 (autouse fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FAST = ["--width", "64", "--height", "64", "--steps", "4", "--images-per-prompt", "1", "--no-progress"]
# Enough to overfit the tiny UNet to the toy: a high rate on a rank-8 UNet LoRA for four epochs of nine images
# (three held out for the validation loss), a file every two epochs: dwjz_toy-000002 and the final dwjz_toy.
TRAIN = (
    "max_train_epochs=4",
    "save_every_n_epochs=2",
    "sample_every_n_steps=0",
    "network_train_unet_only=true",
    "network_dim=8",
    "network_alpha=8",
    "learning_rate=3e-2",
    "unet_lr=3e-2",
    "validation_split=0.25",
)


@pytest.fixture(scope="module")
def subject_model(tiny_model_dir, sample_dataset_dir, tmp_path_factory):
    """The tiny SDXL with its VAE fitted to the sample images: a random VAE decodes every latent to much the same
    picture, so no LoRA could bring the images closer to the subject."""
    model = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("subject-model") / "tiny-sdxl")
    return fit_tiny_vae(model, sorted((sample_dataset_dir / SUBSET).glob("*.png")))


@pytest.fixture(scope="module")
def trained_run(subject_model, sample_dataset_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-run")
    data = copy_dataset(sample_dataset_dir, root / "ds", repeats=1)
    out = root / "out"
    run_training(
        data, base_model=str(subject_model), output_dir=out, show_progress=False, step_lines=False, overrides=TRAIN
    )
    return out, data


@pytest.fixture(scope="module")
def evaluated(trained_run, tiny_metric_models):
    out, _data = trained_run
    clip, dino = tiny_metric_models
    # The base model and the dataset come from the run's train_summary.json.
    code = main(["eval", str(out), "--clip-model", str(clip), "--dino-model", str(dino), *FAST])
    assert code == 0
    return out, json.loads((out / "eval" / "eval.json").read_text())


def test_eval_scores_every_checkpoint_and_recommends_one(evaluated, tiny_metric_models):
    out, report = evaluated
    assert report["metric_models"] == {"clip": str(tiny_metric_models[0]), "dino": str(tiny_metric_models[1])}
    labels = [c["label"] for c in report["checkpoints"]]
    assert labels == ["no LoRA", "dwjz_toy-000002", "dwjz_toy"]
    assert [c["step"] for c in report["checkpoints"]] == [0, 18, 36]
    summary = json.loads((out / "train_summary.json").read_text())
    losses = {v["step"]: v["loss"] for v in summary["validation_losses"]}
    assert [c["validation_loss"] for c in report["checkpoints"]] == [None, losses[18], losses[36]]
    assert report["subject"] == {"tokens": "dwjz toy", "trigger": "dwjz"}
    prompts = report["prompts"]
    assert any(p["with_trigger"] for p in prompts) and any(not p["with_trigger"] for p in prompts)
    assert all("dwjz" not in p["clip_text"] for p in prompts)
    assert len(report["images"]) == len(labels) * len(prompts)
    assert all((out / "eval" / row["file"]).is_file() for row in report["images"])
    assert len(report["per_prompt"]) == len(labels) * len(prompts)
    for checkpoint in report["checkpoints"]:
        for key in ("dino_i", "clip_i", "clip_t", "leakage"):
            assert -1.0 <= checkpoint[key] <= 1.0
    # Leakage exists only for the LoRA checkpoints' no-trigger images, and a trained LoRA moves them.
    leaks = [r for r in report["images"] if r["leakage"] is not None]
    assert {r["checkpoint"] for r in leaks} == {"dwjz_toy-000002", "dwjz_toy"}
    assert all(r["leakage"] > 0 for r in leaks)
    recommendation = report["recommendation"]
    assert recommendation["checkpoint"] in labels[1:] and "DINO-I" in recommendation["rule"]
    assert Path(recommendation["file"]) == out / f"{recommendation['checkpoint']}.safetensors"
    assert report["refused"] == []


def test_the_trained_lora_is_closer_to_the_subject_than_no_lora(evaluated):
    """DreamBooth's subject fidelity must tell training from none: the final checkpoint's images resemble the
    training images more than the base model's do, by DINO-I and by CLIP-I (the direction, not a number)."""
    _out, report = evaluated
    by_label = {c["label"]: c for c in report["checkpoints"]}
    final, base = by_label["dwjz_toy"], by_label["no LoRA"]
    assert final["dino_i"] > base["dino_i"]
    assert final["clip_i"] > base["clip_i"]
    # Not noise: the gap is wider than the spread of the no-LoRA images' own DINO-I across prompts and seeds, and
    # the final file wins on most subject prompts, not on one lucky one.
    subject = {p["index"] for p in report["prompts"] if p["with_trigger"]}
    base_images = [r["dino_i"] for r in report["images"] if r["checkpoint"] == "no LoRA" and r["prompt"] in subject]
    assert final["dino_i"] - base["dino_i"] > statistics.stdev(base_images)
    per_prompt = {(row["checkpoint"], row["prompt"]): row["dino_i"] for row in report["per_prompt"]}
    wins = sum(per_prompt[("dwjz_toy", i)] > per_prompt[("no LoRA", i)] for i in subject)
    assert wins > len(subject) / 2


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="headless Chromium not installed (apt install chromium chromium-driver)",
)
def test_report_opens_in_chromium_and_shows_the_grid(evaluated):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    out, report = evaluated
    profile = tempfile.mkdtemp(prefix="lorapipe-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get((out / "eval" / "eval.html").as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#grid tr.prompt")
        assert len(rows) == len(report["prompts"])
        images = driver.find_elements(By.CSS_SELECTOR, "#grid td.cell img")
        assert len(images) == len(report["images"])
        # Every embedded image decoded (a broken data URI has naturalWidth 0), the curves too.
        assert all(driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)
        assert driver.execute_script("return document.getElementById('curves').naturalWidth") > 0
        chosen = report["recommendation"]["checkpoint"]
        header = driver.find_element(By.CSS_SELECTOR, "#grid th.recommended")
        assert header.get_attribute("data-checkpoint") == chosen and "recommended" in header.text
        assert chosen in driver.find_element(By.ID, "recommendation").text
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_folder_without_checkpoints_says_so(tmp_path):
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(tmp_path))}: no LoRA checkpoints .*--output-dir"):
        find_checkpoints(tmp_path)


def test_checkpoints_of_another_run_or_a_base_model_are_refused(trained_run, tmp_path):
    out, _data = trained_run
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in out.glob("*.safetensors"):
        shutil.copy(path, mixed / path.name)
    epoch = mixed / "dwjz_toy-000002.safetensors"
    tensors = load_file(epoch)
    metadata = _metadata(epoch)
    # A resumed run: sd-scripts draws a new session id per process; the files still belong together.
    save_file(tensors, epoch, metadata={**metadata, "ss_session_id": "999"})
    assert len(find_checkpoints(mixed).checkpoints) == 2
    save_file(tensors, epoch, metadata={**metadata, "ss_network_dim": "999"})
    with pytest.raises(EvaluationError, match=r"different training runs: dwjz_toy-000002\.safetensors"):
        find_checkpoints(mixed)
    save_file(tensors, epoch, metadata={**metadata, "ss_sd_model_name": "another-base"})
    with pytest.raises(EvaluationError, match=r"different base models"):
        find_checkpoints(mixed)
    epoch.unlink()
    save_file({"conv_in.weight": tensors[next(iter(tensors))]}, mixed / "dwjz_toy-000002.safetensors")
    with pytest.raises(EvaluationError, match=r"dwjz_toy-000002\.safetensors: holds no Kohya LoRA tensors"):
        find_checkpoints(mixed)


def test_prompts_without_the_trigger_are_named(tmp_path):
    subject = subject_from_tokens("dwjz toy")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of {subject} on a beach\na cat on a sofa\n")
    with pytest.raises(EvaluationError, match=r"prompts\.txt:2: prompt does not contain the trigger 'dwjz'"):
        read_prompts(prompts, subject)
    prompts.write_text("a photo of {subject} on a beach\nleak: a cat on a sofa\n")
    built = read_prompts(prompts, subject)
    assert [p.with_trigger for p in built] == [True, False]
    assert built[0].text == "a photo of dwjz toy on a beach" and built[0].clip_text == "a photo of toy on a beach"


def test_missing_metric_model_says_how_to_get_it(tmp_path, tiny_metric_models):
    clip, _dino = tiny_metric_models
    with pytest.raises(EvaluationError, match=r"--dino-model .*nowhere.*hf download"):
        load_metric_models(str(clip), str(tmp_path / "nowhere"), device="cpu")


def test_a_lora_the_generator_refuses_is_skipped_and_named(
    trained_run, tiny_metric_models, subject_model, tmp_path, capsys
):
    out, data = trained_run
    clip, dino = tiny_metric_models
    broken = tmp_path / "run"
    broken.mkdir()
    shutil.copy(out / "dwjz_toy.safetensors", broken / "dwjz_toy.safetensors")
    epoch = broken / "dwjz_toy-000002.safetensors"
    tensors = load_file(out / "dwjz_toy-000002.safetensors")
    down = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[down] = tensors[down][:, :-1].contiguous()  # one input feature short: does not fit the base model
    save_file(tensors, epoch, metadata=_metadata(out / "dwjz_toy-000002.safetensors"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of {subject} on a beach\nleak: a photo of a dog\n")
    args = ["eval", str(broken), "--dataset", str(data), "--base-model", str(subject_model), "--prompts", str(prompts)]
    args += ["--clip-model", str(clip), "--dino-model", str(dino), *FAST]
    # The others are still scored; the refused file is named with the reason, on stderr and in the report.
    assert main(args) == 0
    assert f"warning: {epoch}: skipped, the generator refused it" in capsys.readouterr().err
    report = json.loads((broken / "eval" / "eval.json").read_text())
    assert [c["label"] for c in report["checkpoints"]] == ["no LoRA", "dwjz_toy"]
    assert report["recommendation"]["checkpoint"] == "dwjz_toy"
    [refused] = report["refused"]
    assert refused["file"] == str(epoch) and "dwjz_toy-000002" in refused["reason"]
    assert {row["checkpoint"] for row in report["images"]} == {"no LoRA", "dwjz_toy"}
    page = (broken / "eval" / "eval.html").read_text()
    assert 'id="refused"' in page and str(epoch) in page
    # Nothing usable: eval fails naming every file and why.
    (broken / "dwjz_toy.safetensors").unlink()
    shutil.rmtree(broken / "eval")
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "the generator refused every checkpoint" in err and f"{epoch}: " in err
    assert not (broken / "eval" / "eval.json").exists()


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_recommendation_rule():
    from lorapipe.evaluate.metrics import CheckpointScore
    from lorapipe.evaluate.recommend import recommend

    def score(label, dino_i, clip_t, leakage):
        return CheckpointScore(checkpoint=label, dino_i=dino_i, clip_i=dino_i, clip_t=clip_t, leakage=leakage)

    early, middle, late = score("e1", 0.50, 0.30, 0.10), score("e2", 0.60, 0.29, 0.12), score("e3", 0.70, 0.20, 0.12)
    # e3 is the most faithful subject but forgets the prompt (CLIP-T 0.10 below the best): e2 wins.
    chosen = recommend([early, middle, late], clip_t_margin=0.02, leakage_margin=0.05)
    assert chosen.checkpoint == "e2" and chosen.eligible == ("e1", "e2")
    # e2 leaks too much into no-trigger prompts for a tight leakage margin: e1.
    assert recommend([early, middle, late], clip_t_margin=0.02, leakage_margin=0.01).checkpoint == "e1"
    # Equal subject fidelity: the earlier (less overfit) checkpoint.
    assert recommend([score("a", 0.6, 0.3, 0.1), score("b", 0.6, 0.3, 0.1)]).checkpoint == "a"
    # Nothing meets both margins (the prompt-faithful one leaks most): the CLIP-T margin alone decides.
    leaky = [score("x", 0.5, 0.30, 0.40), score("y", 0.7, 0.10, 0.05)]
    assert recommend(leaky, clip_t_margin=0.02, leakage_margin=0.05).checkpoint == "x"
    with pytest.raises(EvaluationError, match="nothing to recommend"):
        recommend([])


def test_subject_from_the_folder_name_or_the_lora_metadata(tmp_path):
    from lorapipe.evaluate.prompts import subject_of

    (tmp_path / "20_ohwx woman").mkdir()
    assert subject_of(tmp_path).tokens == "ohwx woman"
    plain = tmp_path / "20_ohwx woman"  # an image_dir without the Kohya folder rule inside
    recorded = {"ss_dataset_dirs": json.dumps({"10_dwjz toy": {"n_repeats": 10, "img_count": 4}})}
    assert subject_of(plain, recorded).trigger == "dwjz"
    with pytest.raises(EvaluationError, match=r"no <repeats>_<trigger> \[class\] folder.*--trigger"):
        subject_of(plain, {})
