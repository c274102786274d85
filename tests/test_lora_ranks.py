"""sd-scripts' block-wise ranks (network_args block_dims & co.) on the tiny model and the SDXL layout."""

from __future__ import annotations

import pytest
import torch
from lora_fixtures import tiny_models, torch_single_thread  # noqa: F401

from lorapipe.errors import ConfigError
from lorapipe.lora.network import attach_kohya_lora
from lorapipe.lora.ranks import BlockRanks, UnetBlocks
from lorapipe.sdxl.presets import unet_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def attach(models, **options):
    kwargs = dict(network_dim=4, network_alpha=2.0, conv_dim=None, conv_alpha=None, dropout=None, seed=0)
    kwargs.update(options)
    return attach_kohya_lora(models["unet"], models["text_encoder"], models["text_encoder_2"], **kwargs)


def test_sdxl_has_sd_scripts_23_blocks_in_sgm_order():
    blocks = UnetBlocks.from_config(unet_config("full"))
    assert blocks.count == 23
    assert blocks.index("lora_unet_input_blocks_0_0_x") == 1
    assert blocks.index("lora_unet_input_blocks_8_1_proj_in") == 9
    assert blocks.index("lora_unet_middle_block_1_proj_in") == 11
    assert blocks.index("lora_unet_output_blocks_0_1_proj_in") == 13
    assert blocks.index("lora_unet_output_blocks_8_0_in_layers_2") == 21


def test_block_dims_set_rank_and_alpha_per_block_and_zero_skips():
    models = tiny_models()
    dims = [4] * 23
    dims[5] = 8  # input_blocks_4
    dims[11] = 0  # middle_block_1: no modules at all
    alphas = [2.0] * 23
    alphas[5] = 16.0
    network = attach(models, block_ranks=BlockRanks.parse(",".join(map(str, dims)), alphas))
    shapes = network.kohya_shapes()
    in4 = [k for k in shapes if k.startswith("lora_unet_input_blocks_4_") and k.endswith("lora_down.weight")]
    assert in4 and all(shapes[k][0] == 8 for k in in4)
    assert not [k for k in shapes if k.startswith("lora_unet_middle_block_1_")]
    assert shapes["lora_unet_input_blocks_5_1_proj_in.lora_down.weight"][0] == 4
    assert network.alphas["lora_unet_input_blocks_4_1_proj_in"] == 16.0
    assert network.alphas["lora_unet_input_blocks_5_1_proj_in"] == 2.0
    # peft computes with the same per-module scale that the file stores
    layer = network.lora_layer(next(t for t in network.targets if t.kohya_name == "lora_unet_input_blocks_4_1_proj_in"))
    assert layer.scaling["kohya"] == pytest.approx(16.0 / 8)
    # text encoders keep network_dim
    assert shapes["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"][0] == 4
    sd = network.kohya_state_dict(torch.float16)
    assert set(sd) == set(shapes)


def test_conv_block_dims_turn_on_conv_lora_per_block():
    models = tiny_models()
    conv_dims = [0] * 23
    conv_dims[2] = 2  # input_blocks_1: its resnet's 3x3 convs
    network = attach(models, block_ranks=BlockRanks.parse(conv_block_dims=conv_dims), train_text_encoder=False)
    shapes = network.kohya_shapes()
    convs = {k for k, s in shapes.items() if len(s) == 4 and s[2:] == (3, 3)}
    assert convs == {
        "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight",
        "lora_unet_input_blocks_1_0_out_layers_3.lora_down.weight",
    }
    assert network.alphas["lora_unet_input_blocks_1_0_in_layers_2"] == 1.0  # conv alpha default
    # the resnet's Linear (time embedding) joins with network_dim, as in sd-scripts' conv target classes
    assert shapes["lora_unet_input_blocks_1_0_emb_layers_1.lora_down.weight"][0] == 4


def test_block_ranks_are_checked():
    with pytest.raises(ConfigError, match="block_dims: 3 values given; this UNet has 23 blocks"):
        attach(tiny_models(), block_ranks=BlockRanks.parse("1,2,3"))
    with pytest.raises(ConfigError, match="conv_block_alphas"):
        BlockRanks.parse(conv_block_alphas="1,x")
    with pytest.raises(ConfigError, match="block_dims"):
        BlockRanks.parse(block_dims="4,-1")


def test_network_from_weights_reproduces_a_mixed_rank_file():
    """sd-scripts' create_network_from_weights: ranks/alphas per module come from the file itself."""
    from lora_fixtures import outputs, probe_inputs, randomize_lora

    from lorapipe.lora.from_weights import attach_kohya_lora_from_weights

    models = tiny_models()
    dims = [4] * 23
    dims[5], dims[14] = 8, 0
    network = attach(models, conv_dim=2, conv_alpha=0.5, block_ranks=BlockRanks.parse(dims), train_text_encoder=False)
    randomize_lora(network)
    probe = probe_inputs(models["unet"], models["text_encoder_2"])
    expected = outputs(models, probe)
    saved = network.kohya_state_dict()

    fresh = tiny_models()
    loaded, report = attach_kohya_lora_from_weights(
        fresh["unet"], fresh["text_encoder"], fresh["text_encoder_2"], saved
    )
    assert report.loaded == len(network.targets) and not report.missing and not report.unexpected
    assert loaded.ranks == network.ranks and loaded.alphas == network.alphas
    assert loaded.num_modules["text_encoder"] == 0
    got = outputs(fresh, probe)
    torch.testing.assert_close(got["unet"], expected["unet"], rtol=1e-4, atol=1e-5)


def test_network_from_weights_refuses_a_file_without_sdxl_modules():
    from lorapipe.errors import ModelLoadError
    from lorapipe.lora.from_weights import attach_kohya_lora_from_weights

    models = tiny_models()
    sd15_like = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8)}
    with pytest.raises(ModelLoadError, match="no Kohya LoRA module"):
        attach_kohya_lora_from_weights(
            models["unet"], models["text_encoder"], models["text_encoder_2"], sd15_like, source="old.safetensors"
        )


def test_all_zero_block_dims_is_refused():
    with pytest.raises(ConfigError, match="rank 0"):
        attach(tiny_models(), block_ranks=BlockRanks.parse([0] * 23), train_text_encoder=False)
