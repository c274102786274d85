"""End-to-end trainer runs on the tiny SDXL model and the sample dataset (a few steps each, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lorapipe.cli.main import main
from lorapipe.errors import ConfigError, TrainingError
from lorapipe.train.run import run_training
from tests.train_fixtures import copy_dataset, one_thread  # noqa: F401 (autouse fixture)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_cli_train_writes_kohya_lora_and_summary(tiny_model_dir, sample_dataset_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "train",
            str(sample_dataset_dir),
            "--base-model",
            str(tiny_model_dir),
            "--output-dir",
            str(out),
            "--set",
            "max_train_steps=3",
            "--no-progress",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "step=3 loss=" in captured.out
    lora = out / "dwjz_toy.safetensors"
    assert captured.out.strip().endswith(str(lora))
    tensors = _tensors(lora)
    assert any(k.startswith("lora_unet_") for k in tensors) and any(k.startswith("lora_te1_") for k in tensors)
    assert all(t.dtype == torch.float16 for t in tensors.values())  # save_precision = "fp16" in the sample config
    # Training moved the up weights away from their zero init.
    assert any(k.endswith("lora_up.weight") and t.abs().max() > 0 for k, t in tensors.items())
    meta = _metadata(lora)
    assert meta["ss_steps"] == "3" and meta["ss_output_name"] == "dwjz_toy" and meta["ss_seed"] == "1234"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps_done"] == 3 and len(summary["losses"]) == 3
    assert summary["dataset_hash"] and summary["memory"]["peak_rss_bytes"] > 0
    assert summary["config"]["max_train_steps"] == 3


def test_same_seed_gives_the_same_file(tiny_model_dir, sample_dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    args = dict(base_model=str(tiny_model_dir), show_progress=False, step_lines=False)
    runs = [
        run_training(
            sample_dataset_dir, output_dir=tmp_path / name, overrides=("max_train_steps=2", f"seed={seed}"), **args
        )
        for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    assert runs[0].lora_path.read_bytes() == runs[1].lora_path.read_bytes()
    assert _tensors(runs[0].lora_path)["lora_unet_input_blocks_4_1_proj_in.lora_up.weight"].abs().max() > 0
    assert not all(
        torch.equal(x, y) for x, y in zip(_tensors(runs[0].lora_path).values(), _tensors(runs[2].lora_path).values())
    )


def test_interrupted_run_resumes_on_the_same_loss_curve(tiny_model_dir, sample_dataset_dir, tmp_path):
    args = dict(
        base_model=str(tiny_model_dir),
        show_progress=False,
        step_lines=False,
        overrides=(
            "max_train_steps=4",
            "gradient_accumulation_steps=2",
            "lr_scheduler=cosine",
            "lr_warmup_steps=1",
            "network_dropout=0.1",
        ),
    )
    whole = run_training(sample_dataset_dir, output_dir=tmp_path / "whole", **args)
    part = run_training(sample_dataset_dir, output_dir=tmp_path / "part", stop_after_steps=2, **args)
    assert part.status == "interrupted" and part.lora_path is None and part.steps_done == 2
    assert part.state_path == tmp_path / "part" / "dwjz_toy-step00000002-state"
    assert json.loads((tmp_path / "part" / "train_summary.json").read_text())["status"] == "interrupted"
    rest = run_training(sample_dataset_dir, output_dir=tmp_path / "part", resume=tmp_path / "part", **args)
    assert rest.status == "finished" and rest.steps_done == 4
    assert part.losses == pytest.approx(whole.losses[:2], rel=1e-6)
    assert rest.losses == pytest.approx(whole.losses[2:], rel=1e-6)
    a, b = _tensors(whole.lora_path), _tensors(rest.lora_path)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)


def test_resume_onto_another_dataset_is_refused(tiny_model_dir, sample_dataset_dir, tmp_path):
    args = dict(base_model=str(tiny_model_dir), show_progress=False, step_lines=False)
    first = run_training(
        sample_dataset_dir, output_dir=tmp_path / "a", stop_after_steps=1, overrides=("max_train_steps=2",), **args
    )
    other = copy_dataset(sample_dataset_dir, tmp_path / "other")
    caption = next((other / "20_dwjz toy").glob("*.txt"))
    caption.write_text("dwjz toy, a different caption\n")
    with pytest.raises(TrainingError, match="different dataset"):
        run_training(
            other, output_dir=tmp_path / "b", resume=first.state_path, overrides=("max_train_steps=2",), **args
        )


def test_non_finite_loss_stops_before_the_step_and_names_the_files(tiny_model_dir, sample_dataset_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"loss is (nan|inf).*step 1 for .*\.png"):
        run_training(
            sample_dataset_dir,
            base_model=str(tiny_model_dir),
            output_dir=out,
            show_progress=False,
            step_lines=False,
            overrides=("max_train_steps=3", "noise_offset=1e39"),
        )
    assert not (out / "dwjz_toy.safetensors").exists()
    kept = _tensors(out / "dwjz_toy-step00000000.safetensors")  # the last good weights (here: the initial ones)
    assert all(torch.isfinite(t.float()).all() for t in kept.values())
    assert json.loads((out / "train_summary.json").read_text())["status"] == "failed"


def test_bad_input_fails_fast_and_writes_nothing(tiny_model_dir, sample_dataset_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "train",
            str(sample_dataset_dir),
            "--base-model",
            str(tiny_model_dir),
            "--output-dir",
            str(out),
            "--set",
            "no_such_key=1",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "no_such_key" in err and not out.exists()
    code = main(["train", str(tmp_path / "missing"), "--base-model", str(tiny_model_dir), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "missing" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    with pytest.raises(ConfigError, match="cache_text_encoder_outputs"):
        run_training(
            sample_dataset_dir,
            base_model=str(tiny_model_dir),
            output_dir=out,
            overrides=("cache_text_encoder_outputs=true",),
        )
    assert not out.exists()


def test_epoch_files_samples_and_tensorboard(tiny_model_dir, sample_dataset_dir, tmp_path):
    data = copy_dataset(sample_dataset_dir, tmp_path / "ds", keep=2, repeats=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("dwjz toy on a beach --w 64 --h 64 --s 2 --d 5 --l 4\n")
    out = tmp_path / "out"
    result = run_training(
        data,
        base_model=str(tiny_model_dir),
        output_dir=out,
        show_progress=False,
        step_lines=False,
        overrides=(
            "max_train_epochs=3",
            "save_every_n_epochs=1",
            "save_last_n_epochs=1",
            f"sample_prompts={prompts}",
            "sample_every_n_epochs=1",
            "sample_sampler=euler_a",
            f"logging_dir={tmp_path / 'logs'}",
            "network_train_unet_only=true",
            "cache_text_encoder_outputs_to_disk=true",
            "cache_latents_to_disk=true",
        ),
    )
    assert result.steps_done == 6
    subset = data / "1_dwjz toy"
    assert len(list(subset.glob("*_te_outputs.npz"))) == 2 and len(list(subset.glob("*_sdxl.npz"))) == 2
    names = sorted(p.name for p in out.glob("*.safetensors"))
    assert names == ["dwjz_toy-000002.safetensors", "dwjz_toy.safetensors"]  # 000001 pruned, 000003 is the final
    assert not any(k.startswith("lora_te") for k in _tensors(out / "dwjz_toy.safetensors"))
    samples = sorted(p.name for p in (out / "sample").glob("*.png"))
    assert len(samples) == 3 and samples[0].startswith("dwjz_toy_e000001_00_") and samples[0].endswith("_5.png")
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))


def test_bf16_mixed_precision_and_extra_objectives_run_on_cpu(tiny_model_dir, sample_dataset_dir, tmp_path):
    """bf16 autocast with fp32 LoRA weights, huber loss, min-SNR, multires + ip noise, Adafactor, 150 tokens."""
    result = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "out",
        show_progress=False,
        step_lines=False,
        overrides=(
            "max_train_steps=2",
            "mixed_precision=bf16",
            "save_precision=bf16",
            "loss_type=huber",
            "min_snr_gamma=5",
            "multires_noise_iterations=4",
            "ip_noise_gamma=0.1",
            "optimizer_type=Adafactor",
            "lr_scheduler=adafactor",
            "max_token_length=150",
            'network_args=["conv_dim=2"]',
        ),
    )
    tensors = _tensors(result.lora_path)
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert any(t.ndim == 4 and t.shape[-1] == 3 for t in tensors.values())  # conv LoRA (3x3 down weights)
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_token_warmup_reaches_the_training_captions(tiny_model_dir, sample_dataset_dir, tmp_path):
    """With token_warmup_min = 0 the first steps train on (almost) empty captions: the losses change."""
    common = ("max_train_steps=2", "seed=6", 'sample_prompts=""', "sample_every_n_steps=0")
    plain = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "a",
        overrides=common,
        show_progress=False,
        step_lines=False,
    )
    warm = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "b",
        overrides=(*common, "token_warmup_step=100", "token_warmup_min=0"),
        show_progress=False,
        step_lines=False,
    )
    assert warm.losses[0] != plain.losses[0]


def test_single_file_base_model_hashes_go_into_the_metadata(tiny_model_dir, sample_dataset_dir, tmp_path, monkeypatch):
    """As sd-scripts: a base model given as one file gets ss_sd_model_hash (A1111's legacy hash) and
    ss_new_sd_model_hash (sha256 of the file) in every saved LoRA; a diffusers folder gets neither."""
    from lorapipe.file_names import CACHE_DIR_ENV
    from lorapipe.hashes import legacy_hash_file, sha256_file
    from lorapipe.sdxl.load import load_sdxl_pipeline
    from lorapipe.sdxl.single_file import write_single_file

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    base = write_single_file(load_sdxl_pipeline(str(tiny_model_dir)), tmp_path / "tiny-sdxl.safetensors")
    for model, out in ((base, tmp_path / "from-file"), (tiny_model_dir, tmp_path / "from-folder")):
        result = run_training(
            sample_dataset_dir,
            base_model=str(model),
            output_dir=out,
            show_progress=False,
            step_lines=False,
            overrides=("max_train_steps=1",),
        )
        with safe_open(str(result.lora_path), "pt") as f:
            meta = f.metadata()
        hashes = (meta.get("ss_sd_model_hash"), meta.get("ss_new_sd_model_hash"))
        assert hashes == ((legacy_hash_file(base), sha256_file(base)) if model == base else (None, None))
