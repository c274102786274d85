"""Speed choices the trainer makes for the user must not change what it trains: text-encoder outputs cached
automatically when the encoders are frozen and captions fixed (as Kohya's cache_text_encoder_outputs), and the
fused AdamW step."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lorapipe.train.models import SpeedOptions
from lorapipe.train.optimizers import build_optimizer
from lorapipe.train.plan import plan_run
from lorapipe.train.run import run_training
from lorapipe.train.session import automatic_text_cache
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)

NOTE = "text-encoder outputs cached in memory"
# Two images per batch: the cache encodes captions as they come up, the uncached run a whole batch at once.
COMMON = (
    "max_train_steps=3",
    'sample_prompts=""',
    "sample_every_n_steps=0",
    "save_every_n_epochs=0",
    "network_train_unet_only=true",
    "cache_latents=false",
    "train_batch_size=2",
    "enable_bucket=false",
    "seed=7",
)


def _train(dataset, model, out, *, sets=(), speed=None):
    return run_training(
        dataset,
        base_model=str(model),
        output_dir=out,
        overrides=COMMON + tuple(sets),
        show_progress=False,
        step_lines=False,
        speed=speed,
    )


def test_automatic_text_encoder_cache_trains_the_same_lora(tiny_model_dir, sample_dataset_dir, tmp_path, capsys):
    cached = _train(sample_dataset_dir, tiny_model_dir, tmp_path / "cached")
    assert NOTE in capsys.readouterr().err
    fresh = _train(
        sample_dataset_dir, tiny_model_dir, tmp_path / "fresh", speed=SpeedOptions(cache_text_automatically=False)
    )
    assert NOTE not in capsys.readouterr().err
    assert cached.losses == fresh.losses
    ours, theirs = load_file(str(cached.lora_path)), load_file(str(fresh.lora_path))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(
    ("sets", "cached"),
    [
        ((), True),
        (("shuffle_caption=true",), False),
        (("caption_dropout_rate=0.1",), False),
        (("enable_wildcard=true",), False),
        (("network_train_unet_only=false",), False),
    ],
)
def test_automatic_cache_only_for_frozen_encoders_and_fixed_captions(
    tiny_model_dir, sample_dataset_dir, tmp_path, sets, cached
):
    plan = plan_run(sample_dataset_dir, base_model=str(tiny_model_dir), output_dir=tmp_path, overrides=COMMON + sets)
    assert (automatic_text_cache(plan, entry_bytes=1000) is not None) == cached


def test_automatic_cache_stays_within_its_memory_budget(tiny_model_dir, sample_dataset_dir, tmp_path):
    plan = plan_run(sample_dataset_dir, base_model=str(tiny_model_dir), output_dir=tmp_path, overrides=COMMON)
    assert automatic_text_cache(plan, entry_bytes=2**30) is None


def test_adamw_steps_fused_unless_the_user_chose():
    def adamw(args):
        params = [torch.nn.Parameter(torch.zeros(2))]
        return build_optimizer("AdamW", args, [{"params": params, "lr": 0.1}], 0.1)[0]

    assert adamw([]).defaults["fused"] and not adamw([]).defaults["foreach"]
    assert adamw(["foreach=False"]).defaults["foreach"] is False and not adamw(["foreach=False"]).defaults["fused"]
