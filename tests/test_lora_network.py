"""The peft-backed Kohya network on the tiny SDXL models: init, freezing, groups, state dict, loading, dropout."""

from __future__ import annotations

import pytest
import torch
from lora_fixtures import outputs, probe_inputs, randomize_lora, tiny_models, torch_single_thread  # noqa: F401

from lorapipe.errors import ConfigError, TrainingError
from lorapipe.lora.network import attach_kohya_lora
from lorapipe.lora.targets import kohya_target_names

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def attach(models, **options):
    kwargs = dict(network_dim=4, network_alpha=2.0, conv_dim=None, conv_alpha=None, dropout=None, seed=0)
    kwargs.update(options)
    return attach_kohya_lora(models["unet"], models["text_encoder"], models["text_encoder_2"], **kwargs)


def max_diff(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture()
def models():
    return tiny_models()


def test_fresh_network_is_a_no_op_and_only_lora_weights_train(models):
    probe = probe_inputs(models["unet"], models["text_encoder_2"])
    before = outputs(models, probe)
    network = attach(models, conv_dim=2, conv_alpha=1.0)
    assert max_diff(before, outputs(models, probe)) == 0.0
    parts = ("unet", "text_encoder", "text_encoder_2")
    trainable = [p for name in parts for p in models[name].parameters() if p.requires_grad]
    lora = network.lora_parameters()
    assert {id(p) for p in trainable} == {id(p) for p in lora}
    assert len(lora) == 2 * sum(network.num_modules.values())
    # Kohya initialisation: up is zero, down is not.
    sd = network.kohya_state_dict()
    ups = [v for k, v in sd.items() if k.endswith("lora_up.weight")]
    downs = [v for k, v in sd.items() if k.endswith("lora_down.weight")]
    assert all(float(u.abs().max()) == 0 for u in ups) and all(float(d.abs().max()) > 0 for d in downs)


def test_state_dict_matches_the_kohya_targets_shapes_and_alphas(models):
    network = attach(models, network_dim=4, network_alpha=2.0, conv_dim=2, conv_alpha=0.5)
    sd = network.kohya_state_dict(torch.float16)
    targets = kohya_target_names(models["unet"], models["text_encoder"], models["text_encoder_2"], conv=True)
    suffixes = (".lora_down.weight", ".lora_up.weight", ".alpha")
    assert set(sd) == {f"{t.kohya_name}{s}" for t in targets for s in suffixes}
    assert all(v.dtype == torch.float16 for v in sd.values())
    for target in targets:
        layer = models[target.part].get_submodule(target.module_name).base_layer
        down, up, alpha = (sd[target.kohya_name + s] for s in (".lora_down.weight", ".lora_up.weight", ".alpha"))
        assert alpha.shape == ()
        if target.kind == "linear":
            assert down.shape == (4, layer.in_features) and up.shape == (layer.out_features, 4)
            assert float(alpha) == 2.0
        else:
            rank = 2 if target.kind == "conv3x3" else 4
            k = layer.kernel_size
            assert down.shape == (rank, layer.in_channels, *k) and up.shape == (layer.out_channels, rank, 1, 1)
            assert float(alpha) == (0.5 if target.kind == "conv3x3" else 2.0)


def test_alpha_scales_the_update_like_kohya(models):
    """out = W x + up(down(x)) * alpha / dim: doubling alpha doubles the UNet's change."""
    probe = probe_inputs(models["unet"], models["text_encoder_2"])
    base = outputs(models, probe)["unet"]
    network = attach(models, network_alpha=1.0, train_text_encoder=False)
    randomize_lora(network, std=0.01)
    small = outputs(models, probe)["unet"] - base
    for target in network.targets:
        network.lora_layer(target).scaling["kohya"] *= 2
    large = outputs(models, probe)["unet"] - base
    assert float(small.abs().max()) > 0
    torch.testing.assert_close(large, 2 * small, rtol=0.05, atol=1e-5)


def test_default_alpha_zero_or_none_means_dim(models):
    network = attach(models, network_dim=8, network_alpha=None, train_unet=False)
    assert set(network.alphas.values()) == {8.0}


def test_unet_only_and_text_encoder_only_attach_only_that_part(models):
    network = attach(models, train_text_encoder=False)
    assert network.num_modules["text_encoder"] == network.num_modules["text_encoder_2"] == 0
    assert all(k.startswith("lora_unet_") for k in network.kohya_state_dict())
    assert not any("lora" in n for n, _ in models["text_encoder"].named_modules())
    other = tiny_models()
    te_only = attach(other, train_unet=False)
    assert te_only.num_modules["unet"] == 0
    assert {k.split("_")[1] for k in te_only.kohya_state_dict()} == {"te1", "te2"}
    with pytest.raises(ConfigError):
        attach(tiny_models(), train_unet=False, train_text_encoder=False)


def test_parameter_groups_follow_sd_scripts(models):
    network = attach(models)
    groups = network.parameter_groups(unet_lr=1e-4, text_encoder_lr=None, default_lr=5e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-4), ("text_encoder", 5e-4), ("text_encoder_2", 5e-4)]
    assert sum(len(g["params"]) for g in groups) == len(network.lora_parameters())
    two = network.parameter_groups(None, [1e-5, 2e-5], 5e-4)
    assert [g["lr"] for g in two] == [5e-4, 1e-5, 2e-5]
    plus = network.parameter_groups(1e-4, 1e-5, 1e-3, loraplus_unet_lr_ratio=16)
    assert [(g["name"], g["lr"]) for g in plus][:2] == [("unet", 1e-4), ("unet_plus", 1e-4 * 16)]
    ups = {id(p) for p in plus[1]["params"]}
    assert ups == {id(network.lora_layer(t).lora_B["kohya"].weight) for t in network.targets.unet}
    zero_te = network.parameter_groups(1e-4, 0.0, 1e-3)
    assert [g["name"] for g in zero_te] == ["unet"]
    assert not any(p.requires_grad for p in network.lora_parameters("text_encoder"))
    torch.optim.AdamW(groups)  # torch accepts the groups as they are


def test_load_kohya_state_dict_reproduces_outputs_and_adopts_file_alpha(models):
    probe = probe_inputs(models["unet"], models["text_encoder_2"])
    network = attach(models, network_alpha=2.0, conv_dim=2, conv_alpha=1.0)
    randomize_lora(network)
    network.alphas.update({k: 3.0 for k in network.alphas})
    for target in network.targets:
        network.lora_layer(target).scaling["kohya"] = 3.0 / network.ranks[target.kohya_name]
    expected = outputs(models, probe)
    saved = network.kohya_state_dict()

    other = tiny_models()
    fresh = attach(other, network_alpha=1.0, conv_dim=2, conv_alpha=1.0, seed=5)
    report = fresh.load_kohya_state_dict(saved)
    assert report.loaded == len(network.targets) and not report.missing and not report.unexpected
    assert max_diff(expected, outputs(other, probe)) < 1e-5
    assert set(fresh.kohya_state_dict()["lora_unet_input_blocks_4_1_proj_in.alpha"].reshape(1).tolist()) == {3.0}


def test_load_reports_unexpected_and_missing_and_refuses_other_ranks(models):
    network = attach(models, train_text_encoder=False)
    sd = network.kohya_state_dict()
    partial = {k: v for k, v in sd.items() if "input_blocks_4_1_proj_in" not in k}
    partial["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 4)
    report = network.load_kohya_state_dict(partial)
    assert report.missing == ("lora_unet_input_blocks_4_1_proj_in",)
    assert report.unexpected == ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",)
    bigger = attach(tiny_models(), network_dim=8, train_text_encoder=False).kohya_state_dict()
    with pytest.raises(TrainingError, match="network_dim"):
        network.load_kohya_state_dict(bigger)


def test_load_accepts_diffusers_block_names(models):
    """Files from diffusers' convert_state_dict_to_kohya name UNet blocks the diffusers way (sd-scripts reads them)."""
    network = attach(models, train_text_encoder=False)
    randomize_lora(network)
    sd = network.kohya_state_dict()
    renamed = {}
    for target in network.targets.unet:
        diffusers_stem = "lora_unet_" + target.module_name.replace(".", "_")
        for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
            renamed[diffusers_stem + suffix] = sd[target.kohya_name + suffix]
    fresh = attach(tiny_models(), train_text_encoder=False, seed=9)
    assert fresh.load_kohya_state_dict(renamed).loaded == len(network.targets.unet)
    torch.testing.assert_close(fresh.kohya_state_dict(), sd)


def test_network_dropout_acts_on_the_down_output_only_in_training(models):
    network = attach(models, dropout=0.5, train_text_encoder=False)
    target = network.targets.unet[0]
    layer = network.lora_layer(target)
    down = layer.lora_A["kohya"]
    x = torch.randn(3, down.in_features)
    down.eval()
    assert torch.equal(down(x), x @ down.weight.T)
    down.train()
    torch.manual_seed(0)
    dropped = down(x)
    zeros = dropped == 0
    assert zeros.any() and (~zeros).any()
    # Surviving rank activations are scaled by 1/(1-p): dropout sits after down, not on its input.
    torch.testing.assert_close(dropped[~zeros], 2 * (x @ down.weight.T)[~zeros])


def test_seed_makes_initialisation_reproducible():
    first = attach(tiny_models(), seed=3, train_unet=False).kohya_state_dict()
    second = attach(tiny_models(), seed=3, train_unet=False).kohya_state_dict()
    third = attach(tiny_models(), seed=4, train_unet=False).kohya_state_dict()
    torch.testing.assert_close(first, second)
    assert any(not torch.equal(first[k], third[k]) for k in first)


def test_remove_restores_plain_modules_and_outputs(models):
    probe = probe_inputs(models["unet"], models["text_encoder_2"])
    before = outputs(models, probe)
    network = attach(models, conv_dim=2, dropout=0.1)
    randomize_lora(network)
    assert max_diff(before, outputs(models, probe)) > 1e-4
    clean = network.remove()
    assert clean["unet"] is models["unet"]
    assert not any("lora" in n for m in models.values() for n, _ in m.named_modules())
    assert max_diff(before, outputs(models, probe)) == 0.0


def test_rejects_impossible_options(models):
    with pytest.raises(ConfigError, match="network_dim"):
        attach(models, network_dim=0)
    with pytest.raises(ConfigError, match="network_dropout"):
        attach(models, dropout=1.5)
    with pytest.raises(ConfigError, match="conv_dim"):
        attach(models, conv_dim=-1)
    with pytest.raises(ConfigError, match="rank_dropout"):
        attach(models, rank_dropout=1.0)


def test_rank_dropout_zeroes_whole_rank_channels_per_sample(models):
    network = attach(models, rank_dropout=0.5, conv_dim=2, train_text_encoder=False)
    by_kind = {t.kind: t for t in network.targets.unet}
    down = network.lora_layer(by_kind["linear"]).lora_A["kohya"]
    down.train()
    x = torch.randn(4, 7, down.in_features)  # (batch, tokens, features) as inside a transformer block
    torch.manual_seed(0)
    out, plain = down(x), x @ down.weight.T
    dropped = (out == 0).all(dim=1)  # (batch, rank): a channel is zero for every token of that sample or none
    assert dropped.any() and (~dropped).any()
    torch.testing.assert_close(out.permute(0, 2, 1)[~dropped], 2 * plain.permute(0, 2, 1)[~dropped])
    conv = network.lora_layer(by_kind["conv3x3"]).lora_A["kohya"]
    conv.train()
    feature = conv(torch.randn(4, conv.in_channels, 5, 5))
    per_channel = (feature == 0).flatten(2).all(dim=2)
    assert per_channel.any() and (~per_channel).any()


def test_module_dropout_skips_the_whole_update_sometimes(models):
    network = attach(models, module_dropout=0.5, train_text_encoder=False)
    down = network.lora_layer(network.targets.unet[0]).lora_A["kohya"]
    down.train()
    x = torch.randn(2, down.in_features)
    torch.manual_seed(0)
    results = [bool((down(x) == 0).all()) for _ in range(40)]
    assert any(results) and not all(results)
    down.eval()
    assert not (down(x) == 0).all()


def test_full_sdxl_attaches_on_the_meta_device_with_kohya_shapes():
    """The real-size path: peft wraps exactly Kohya's 788 + 264 modules with sd-scripts' tensor shapes."""
    from lorapipe.sdxl.factory import build_models

    full = build_models("full", device="meta")
    network = attach_kohya_lora(
        full["unet"],
        full["text_encoder"],
        full["text_encoder_2"],
        network_dim=16,
        network_alpha=8.0,
        conv_dim=4,
        conv_alpha=1.0,
        dropout=None,
        lora_dtype=None,
    )
    assert network.num_modules == {"unet": 788, "text_encoder": 72, "text_encoder_2": 192}
    shapes = network.kohya_shapes()
    assert len(shapes) == 3 * 1052
    assert shapes["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight"] == (16, 2048)
    assert shapes["lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj.lora_up.weight"] == (10240, 16)
    assert shapes["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"] == (4, 320, 3, 3)
    assert shapes["lora_unet_output_blocks_2_2_conv.lora_up.weight"] == (1280, 4, 1, 1)
    assert shapes["lora_unet_input_blocks_4_0_skip_connection.lora_down.weight"] == (16, 320, 1, 1)
    assert shapes["lora_te2_text_model_encoder_layers_31_mlp_fc1.lora_up.weight"] == (5120, 16)
    assert shapes["lora_te1_text_model_encoder_layers_11_self_attn_out_proj.lora_down.weight"] == (16, 768)
    assert network.alphas["lora_unet_output_blocks_2_2_conv"] == 1.0
    assert network.alphas["lora_unet_input_blocks_4_0_skip_connection"] == 8.0


def test_backward_reaches_only_lora_weights_like_a_kohya_first_step(models):
    """Fresh network: up = 0, so the first step's gradient lands on every up weight and on no base weight."""
    network = attach(models, conv_dim=2)
    for part in ("unet", "text_encoder", "text_encoder_2"):
        models[part].train()
    probe = probe_inputs(models["unet"], models["text_encoder_2"])
    context = torch.cat(
        [
            models["text_encoder"](probe.token_ids).last_hidden_state,
            models["text_encoder_2"](probe.token_ids).last_hidden_state,
        ],
        dim=-1,
    )
    assert context.shape[-1] == models["unet"].config.cross_attention_dim
    pred = models["unet"](probe.latents, 10, context, added_cond_kwargs=probe.added).sample
    pred.pow(2).mean().backward()
    for target in network.targets:
        layer = network.lora_layer(target)
        assert layer.lora_B["kohya"].weight.grad is not None, target.kohya_name
        assert float(layer.lora_B["kohya"].weight.grad.abs().sum()) > 0, target.kohya_name
    assert all(
        p.grad is None
        for part in ("unet", "text_encoder", "text_encoder_2")
        for n, p in models[part].named_parameters()
        if "lora_" not in n
    )


def _loss_and_grads(models, network, probe, lora_dtype):
    """A step's loss through both encoders and the UNet, and the gradient of every LoRA tensor by Kohya key."""
    for param in models["unet"].parameters():
        param.grad = None
    context = torch.cat(
        [
            models["text_encoder"](probe.token_ids).last_hidden_state,
            models["text_encoder_2"](probe.token_ids).last_hidden_state,
        ],
        dim=-1,
    )
    pred = models["unet"](probe.latents.to(lora_dtype), 10, context, added_cond_kwargs=probe.added).sample
    loss = pred.float().pow(2).mean()
    loss.backward()
    grads = {}
    for target in network.targets:
        layer = network.lora_layer(target)
        grads[f"{target.kohya_name}.down"] = layer.lora_A["kohya"].weight.grad.clone()
        grads[f"{target.kohya_name}.up"] = layer.lora_B["kohya"].weight.grad.clone()
    return loss.detach(), grads


@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16])
def test_lean_forward_gives_peft_outputs_and_gradients_bit_for_bit(models, base_dtype):
    """The Linear layers' lean forward (one adapter, no dropout) is peft's own expression: the same loss and the
    same gradients to the last bit, with the base in float32 or bfloat16 under float32 LoRA weights."""
    for part in ("unet", "text_encoder", "text_encoder_2"):
        models[part].to(base_dtype)
    probe = probe_inputs(models["unet"], models["text_encoder_2"])
    results = {}
    for lean in (False, True):
        network = attach(models, network_alpha=1.7, conv_dim=2, lora_dtype=torch.float32, lean_forward=lean)
        randomize_lora(network)
        assert len(network._lean) == (sum(t.kind == "linear" for t in network.targets) if lean else 0)
        results[lean] = _loss_and_grads(models, network, probe, base_dtype)
        network.remove()
        assert not any("forward" in vars(module) for part in models.values() for module in part.modules())
    assert torch.equal(results[True][0], results[False][0])
    assert results[True][1].keys() == results[False][1].keys()
    assert all(torch.equal(results[True][1][k], results[False][1][k]) for k in results[False][1])


def test_dropouts_keep_peft_forward_so_their_hooks_run(models):
    assert not attach(models, dropout=0.1)._lean
