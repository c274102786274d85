"""validation_split + validate_every_n_steps: held-out images are never trained, and their loss is reported."""

from __future__ import annotations

import json

from safetensors import safe_open

from lorapipe.config import load_train_config
from lorapipe.dataset.scan import scan_dataset
from lorapipe.train.run import run_training
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)

COMMON = (
    "max_train_steps=4",
    "seed=6",
    'sample_prompts=""',
    "sample_every_n_steps=0",
    "validation_split=0.25",
    "validation_seed=3",
    "validate_every_n_steps=2",
    "max_validation_steps=2",
)


def test_the_split_is_seeded_and_disjoint(sample_dataset_dir, tmp_path):
    def split(seed):
        cfg = load_train_config(
            sample_dataset_dir,
            overrides=("validation_split=0.25", f"validation_seed={seed}"),
            output_dir=tmp_path,
            base_model="unused",
        ).config
        scan = scan_dataset(cfg.dataset)
        return {i.path.name for i in scan.items}, {i.path.name for i in scan.validation_items}

    trained, held = split(3)
    assert len(held) == 3 and len(trained) == 9 and not trained & held  # 12 images, a quarter held out
    assert split(3) == (trained, held)
    assert split(4)[1] != held  # another seed, another split


def test_validation_loss_is_reported_and_recorded(tiny_model_dir, sample_dataset_dir, tmp_path, capsys):
    result = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "out",
        overrides=COMMON,
        show_progress=False,
    )
    summary = json.loads(result.summary_path.read_text())
    assert summary["num_validation_images"] == 3
    assert [v["step"] for v in summary["validation_losses"]] == [2, 4]
    assert all(v["loss"] > 0 for v in summary["validation_losses"])
    assert "validation step=2 loss=" in capsys.readouterr().out
    with safe_open(str(result.lora_path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_validation_images"] == "3" and meta["ss_validate_every_n_steps"] == "2"
    assert float(meta["ss_validation_split"]) == 0.25
    # The held-out images are not in the training set the metadata describes: 9 images x 20 repeats.
    assert meta["ss_num_train_images"] == "180"


def test_validation_does_not_change_training(tiny_model_dir, sample_dataset_dir, tmp_path):
    """Same run without validating: identical training losses (validation draws from its own generators, and the
    LoRA dropout it switches off is on again for the next step)."""
    dropout = ("network_dropout=0.3",)
    with_val = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "a",
        overrides=(*COMMON, *dropout),
        show_progress=False,
        step_lines=False,
    )
    without = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "b",
        overrides=(*COMMON, *dropout, "validate_every_n_steps=1000"),
        show_progress=False,
        step_lines=False,
    )
    assert with_val.losses == without.losses
    summary = json.loads(without.summary_path.read_text())
    assert [v["step"] for v in summary["validation_losses"]] == []
