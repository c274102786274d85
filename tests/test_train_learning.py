"""Learning is real: after the sample config's short run, the LoRA denoises held-out photos of the subject better
than the base model (same images, timesteps and noise; only the weights differ)."""

from __future__ import annotations

from lorapipe.config import load_train_config
from lorapipe.dataset.scan import scan_dataset
from lorapipe.train.heldout import compare_with_lora, heldout_samples
from lorapipe.train.run import run_training
from tests.train_fixtures import copy_dataset, one_thread  # noqa: F401 (autouse fixture)


def test_lora_lowers_heldout_denoising_loss(tiny_model_dir, sample_dataset_dir, tmp_path):
    train_dir = copy_dataset(sample_dataset_dir, tmp_path / "train", keep=10, skip=2)
    heldout_dir = copy_dataset(sample_dataset_dir, tmp_path / "heldout", keep=2, skip=0)
    result = run_training(
        train_dir, base_model=str(tiny_model_dir), output_dir=tmp_path / "out", show_progress=False, step_lines=False
    )
    assert result.steps_done == 32  # the sample config's max_train_steps
    cfg = load_train_config(heldout_dir, base_model=str(tiny_model_dir), output_dir=tmp_path / "unused").config
    samples = heldout_samples(scan_dataset(cfg.dataset).items, cfg.dataset)
    assert len(samples) == 2
    base, with_lora = compare_with_lora(str(tiny_model_dir), result.lora_path, samples)
    assert with_lora < base * 0.995, (base, with_lora)
