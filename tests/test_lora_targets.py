"""Kohya's target set on the full SDXL architecture (meta device) and on the tiny model, checked against diffusers."""

from __future__ import annotations

import pytest
import torch
from lora_fixtures import torch_single_thread  # noqa: F401

from lorapipe.lora.targets import CONV1X1, CONV3X3, LINEAR, kohya_target_names

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def full_models():
    from lorapipe.sdxl.factory import build_models

    models = build_models("full", device="meta")
    models.pop("vae")
    return models


def targets_of(models, **options):
    return kohya_target_names(models["unet"], models["text_encoder"], models["text_encoder_2"], **options)


def test_full_sdxl_gives_kohyas_module_counts(full_models):
    plain = targets_of(full_models, conv=False)
    assert plain.counts == {"unet": 722, "text_encoder": 72, "text_encoder_2": 192}
    conv = targets_of(full_models, conv=True)
    assert conv.counts["unet"] == 722 + 66
    assert len(set(conv.kohya_names())) == len(conv)
    extra = {t.kohya_name: t.kind for t in conv.unet}.items() - {t.kohya_name: t.kind for t in plain.unet}.items()
    kinds = [kind for _, kind in extra]
    # 17 resnets x (2 convs 3x3 + time-embedding Linear) + 11 skip 1x1 convs + 2 down + 2 up samplers.
    assert (kinds.count(CONV3X3), kinds.count(LINEAR), kinds.count(CONV1X1)) == (38, 17, 11)


@pytest.mark.parametrize(
    "kohya_name",
    [
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_4_1_proj_in",
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj",
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_output_blocks_5_1_transformer_blocks_1_ff_net_2",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te1_text_model_encoder_layers_11_mlp_fc1",
        "lora_te2_text_model_encoder_layers_31_mlp_fc2",
    ],
)
def test_full_sdxl_uses_sd_scripts_key_names(full_models, kohya_name):
    assert kohya_name in set(targets_of(full_models, conv=False).kohya_names())


@pytest.mark.parametrize(
    "kohya_name",
    [
        "lora_unet_input_blocks_1_0_in_layers_2",
        "lora_unet_input_blocks_1_0_emb_layers_1",
        "lora_unet_input_blocks_4_0_skip_connection",
        "lora_unet_input_blocks_3_0_op",
        "lora_unet_output_blocks_2_2_conv",
        "lora_unet_output_blocks_5_2_conv",
        "lora_unet_middle_block_2_out_layers_3",
    ],
)
def test_full_sdxl_conv_names(full_models, kohya_name):
    assert kohya_name in set(targets_of(full_models, conv=True).kohya_names())


def test_never_targets_what_sd_scripts_leaves_alone(full_models):
    names = targets_of(full_models, conv=True).kohya_names()
    forbidden = (
        "input_blocks_0_0",
        "time_embed",
        "label_emb",
        "lora_unet_out_",
        "norm",
        "text_projection",
        "embeddings",
    )
    assert not [n for n in names if any(f in n for f in forbidden)]


def test_diffusers_maps_every_full_sdxl_key_onto_an_existing_module(full_models):
    """Run diffusers' own Kohya conversion on all 788 + 264 names: each lands on a distinct real module."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    targets = targets_of(full_models, conv=True)
    state = {}
    for target in targets:
        state[target.kohya_name + ".lora_down.weight"] = torch.zeros(1)
        state[target.kohya_name + ".lora_up.weight"] = torch.zeros(1)
        state[target.kohya_name + ".alpha"] = torch.tensor(1.0)
    state = _maybe_map_sgm_blocks_to_diffusers(state, full_models["unet"].config)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(state)
    assert len(alphas) == len(targets)

    for part in ("unet", "text_encoder", "text_encoder_2"):
        sub = {k[len(part) + 1 :]: v for k, v in converted.items() if k.split(".")[0] == part}
        if part == "unet":
            peft_keys = convert_unet_state_dict_to_peft(sub)
        else:  # the same two steps diffusers' text-encoder loader takes
            peft_keys = convert_state_dict_to_peft(convert_state_dict_to_diffusers(sub))
            if not hasattr(full_models[part], "text_model"):
                peft_keys = {k.removeprefix("text_model."): v for k, v in peft_keys.items()}
        modules = {k.split(".lora_A.")[0] for k in peft_keys if ".lora_A." in k}
        assert len(modules) == len(targets.part(part)), part
        assert modules == {t.module_name for t in targets.part(part)}, part


def test_tiny_model_follows_the_same_rule():
    """Counts on the tiny model derive from its config the same way as on SDXL."""
    from lora_fixtures import tiny_models

    models = tiny_models()
    unet_cfg = models["unet"].config
    conv = targets_of(models, conv=True)
    plain = targets_of(models, conv=False)
    transformer_blocks = sum(1 for _ in models["unet"].modules() if type(_).__name__ == "BasicTransformerBlock")
    transformers = sum(1 for _ in models["unet"].modules() if type(_).__name__ == "Transformer2DModel")
    assert plain.counts["unet"] == 10 * transformer_blocks + 2 * transformers
    layers1 = models["text_encoder"].config.num_hidden_layers
    layers2 = models["text_encoder_2"].config.num_hidden_layers
    assert (plain.counts["text_encoder"], plain.counts["text_encoder_2"]) == (6 * layers1, 6 * layers2)
    assert conv.counts["unet"] > plain.counts["unet"]
    assert len(unet_cfg.down_block_types) == 3  # SDXL's shape: the SGM indices above are exercised
    only_te = targets_of(models, conv=False, train_unet=False)
    assert only_te.counts["unet"] == 0 and only_te.counts["text_encoder"] == 6 * layers1
