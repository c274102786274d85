"""A short run with networks.lora's extra network_args (dropouts, block-wise ranks, LoRA+) on the tiny model:
the saved file's ranks follow block_dims and LoRA+ gives lora_up its own, larger learning rate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lorapipe.train.run import run_training
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)

# One value per SDXL block: embedding, input_blocks_0..8, middle_block_0..2, output_blocks_0..8, out.
BLOCK_DIMS = [0] + [2, 3, 2, 3, 2, 3, 2, 3, 2] + [0, 1, 0] + [1, 2, 3, 1, 2, 3, 1, 2, 3] + [0]
BLOCK_ALPHAS = [1.0] * 23
_SGM = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_")
_FIRST = {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}


def _block_index(kohya_name: str) -> int:
    match = _SGM.match(kohya_name)
    assert match, kohya_name
    return _FIRST[match.group(1)] + int(match.group(2))


def _lr_scalars(logs: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [p.parent for p in logs.rglob("events.out.tfevents.*")]
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("lr/")}


def test_network_args_run_shapes_the_file_and_splits_the_learning_rates(tiny_model_dir, sample_dataset_dir, tmp_path):
    network_args = [
        "rank_dropout=0.1",
        "module_dropout=0.1",
        "block_dims=" + ",".join(map(str, BLOCK_DIMS)),
        "block_alphas=" + ",".join(map(str, BLOCK_ALPHAS)),
        "loraplus_lr_ratio=4",
        "loraplus_text_encoder_lr_ratio=2",
    ]
    args_toml = "[" + ", ".join(f'"{item}"' for item in network_args) + "]"
    logs = tmp_path / "logs"
    result = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "out",
        show_progress=False,
        step_lines=False,
        overrides=(
            "max_train_steps=2",
            "network_dim=4",
            "network_alpha=4",
            f"network_args={args_toml}",
            "unet_lr=0.001",
            "text_encoder_lr=0.0005",
            f"logging_dir={logs}",
            "log_with=tensorboard",
        ),
    )
    assert result.status == "finished" and result.steps_done == 2
    assert all(torch.isfinite(torch.tensor(result.losses)))

    with safe_open(str(result.lora_path), "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        recorded = json.loads(f.metadata()["ss_network_args"])
    # As sd-scripts does, the file records every network_args entry.
    assert recorded["block_dims"] == ",".join(map(str, BLOCK_DIMS)) and recorded["loraplus_lr_ratio"] == "4"
    downs = {key[: -len(".lora_down.weight")]: t for key, t in tensors.items() if key.endswith(".lora_down.weight")}
    unet = {name: t for name, t in downs.items() if name.startswith("lora_unet_")}
    assert unet
    for name, down in unet.items():
        rank = BLOCK_DIMS[_block_index(name)]
        assert down.shape[0] == rank, name
        assert float(tensors[f"{name}.alpha"]) == BLOCK_ALPHAS[_block_index(name)], name
    # Rank-0 blocks (middle_block_0 and _2) get no modules at all; middle_block_1 does.
    assert not any(name.startswith(("lora_unet_middle_block_0_", "lora_unet_middle_block_2_")) for name in unet)
    assert any(name.startswith("lora_unet_middle_block_1_") for name in unet)
    # Text encoders keep network_dim.
    te = [t for name, t in downs.items() if name.startswith("lora_te")]
    assert te and all(t.shape[0] == 4 for t in te)

    # The run trained: the up weights left their zero init.
    assert any(t.abs().max() > 0 for key, t in tensors.items() if key.endswith("lora_up.weight"))

    # LoRA+: lora_up gets its own group at ratio x the part's learning rate (the TE-specific ratio wins there).
    lrs = _lr_scalars(logs)
    assert lrs["lr/unet"] == pytest.approx(0.001)
    assert lrs["lr/unet_plus"] == pytest.approx(4 * lrs["lr/unet"])
    assert lrs["lr/text_encoder_plus"] == pytest.approx(2 * lrs["lr/text_encoder"])


def test_plain_lycoris_locon_trains_its_preset_layers_with_loraplus(
    tiny_model_dir, sample_dataset_dir, tmp_path, capsys
):
    """`algo=lora, preset=attn-only` trains (through peft, as the log says) only the attention projections, with
    LyCORIS's LoRA+ ratio on lora_up, and the file says lycoris.kohya as sd-scripts + LyCORIS write it."""
    logs = tmp_path / "logs"
    result = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "out",
        show_progress=False,
        step_lines=False,
        overrides=(
            "max_train_steps=2",
            'network_module="lycoris.kohya"',
            'network_args=["algo=lora", "preset=attn-only", "loraplus_lr_ratio=4"]',
            "network_dim=4",
            "network_alpha=2",
            "unet_lr=0.001",
            "network_train_unet_only=true",
            f"logging_dir={logs}",
            "log_with=tensorboard",
        ),
    )
    assert result.status == "finished" and result.steps_done == 2
    assert "plain LoRA: trained with peft's LoRA layers" in capsys.readouterr().err
    with safe_open(str(result.lora_path), "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["preset"] == "attn-only"
    stems = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
    assert stems and all(re.search(r"_attn[12]_(to_q|to_k|to_v|to_out_0)$", stem) for stem in stems), stems
    assert all(float(t) == 2.0 for key, t in tensors.items() if key.endswith(".alpha"))
    assert any(t.abs().max() > 0 for key, t in tensors.items() if key.endswith("lora_up.weight"))
    lrs = _lr_scalars(logs)
    assert lrs["lr/unet_plus"] == pytest.approx(4 * lrs["lr/unet"])
