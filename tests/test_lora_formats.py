"""Every LoRA format users bring merges with the delta A1111/ComfyUI/LyCORIS compute (tiny model, real files).

Each file is written in the key layout and shapes its tool writes for SDXL (Kohya, LyCORIS, diffusers, peft,
ComfyUI/OneTrainer), merged by the generator's fused set, and the change of each layer is compared with the
formula: LyCORIS's own `lycoris.functional` where it has one, the A1111/ComfyUI formula otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch
from generate_fixtures import load_generator, write_loha_for
from safetensors.torch import save_file

from lorapipe.generate.lora_set import ActiveLora, FusedLoraSet
from lorapipe.registry import LoraRegistry, lora_name_of

lycoris_functional = pytest.importorskip("lycoris.functional")

ATTN = ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")  # non-square Linear (cross-attn)
ATTN_SGM = "input_blocks.4.1.transformer_blocks.0.attn2.to_k"
CONV = ("unet", "down_blocks.0.resnets.0.conv1")  # 3x3 conv
CONV_SGM = "input_blocks.1.0.in_layers.2"
TE1 = ("text_encoder", "encoder.layers.0.self_attn.q_proj")
TE2 = ("text_encoder_2", "text_model.encoder.layers.0.mlp.fc1")


def kohya(layer) -> str:
    names = {
        ATTN: "lora_unet_" + ATTN_SGM.replace(".", "_"),
        CONV: "lora_unet_" + CONV_SGM.replace(".", "_"),
        TE1: "lora_te1_text_model_" + TE1[1].replace(".", "_"),
        TE2: "lora_te2_" + TE2[1].replace(".", "_"),
    }
    return names[layer]


@pytest.fixture(scope="module")
def generator(tiny_model_dir, tmp_path_factory):
    return load_generator(tiny_model_dir, tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="module")
def pipe(generator):
    return generator.pipe


def weight_of(pipe, layer):
    return getattr(pipe, layer[0]).get_submodule(layer[1]).weight


def rand(*shape, seed=0, scale=0.2):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def merge(pipe, folder, files, layers):
    """Write `files` ({name: (tensors, te, unet[, header metadata])}), merge them all, return (ΔW per layer,
    warnings)."""
    names = {}
    for name, (tensors, _te, _unet, *metadata) in files.items():
        path = folder / f"{name}.safetensors"  # a name may hold a subfolder
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata[0] if metadata else None)
        names[name] = lora_name_of(path)
    registry = LoraRegistry(folder)
    lora_set = FusedLoraSet(pipe, verify=registry.verify_for_loading)
    before = {layer: weight_of(pipe, layer).detach().clone() for layer in layers}
    applied = lora_set.apply(
        [ActiveLora(registry.resolve(names[n]), names[n], te, unet) for n, (_t, te, unet, *_) in files.items()]
    )
    deltas = {layer: weight_of(pipe, layer).detach().float() - before[layer].float() for layer in layers}
    lora_set.clear()
    for layer in layers:  # the original weights come back bit for bit
        assert torch.equal(weight_of(pipe, layer), before[layer])
    return deltas, applied


def close(actual, expected):
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected.float(), rtol=1e-4, atol=1e-5)


def lora_pair(weight, rank, seed):
    out, inp, *kernel = weight.shape
    return rand(rank, inp, *kernel, seed=seed), rand(out, rank, *([1] * len(kernel)), seed=seed + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kohya_lora_and_locon_with_negative_and_separate_weights(pipe, tmp_path, dtype):
    layers = (ATTN, CONV, TE1, TE2)
    tensors, expected = {}, {}
    for i, layer in enumerate(layers):
        down, up = lora_pair(weight_of(pipe, layer), 4, seed=10 * i)
        down, up = down.to(dtype), up.to(dtype)
        tensors |= {
            f"{kohya(layer)}.lora_down.weight": down,
            f"{kohya(layer)}.lora_up.weight": up,
            f"{kohya(layer)}.alpha": torch.tensor(2.0, dtype=dtype),
        }
        multiplier = -0.7 if layer[0] == "unet" else 0.5
        expected[layer] = (
            multiplier
            * (up.float().flatten(1) @ down.float().flatten(1)).reshape(weight_of(pipe, layer).shape)
            * 2.0
            / 4
        )
    deltas, applied = merge(pipe, tmp_path / "l", {"kohya": (tensors, 0.5, -0.7)}, layers)
    assert applied.warnings == () and len(applied.loras) == 1
    for layer in layers:
        close(deltas[layer], expected[layer])


def test_unet_only_and_te_only_files(pipe, tmp_path):
    down, up = lora_pair(weight_of(pipe, ATTN), 4, 1)
    unet_only = {f"{kohya(ATTN)}.lora_down.weight": down, f"{kohya(ATTN)}.lora_up.weight": up}
    down2, up2 = lora_pair(weight_of(pipe, TE1), 2, 3)
    te_only = {f"{kohya(TE1)}.lora_down.weight": down2, f"{kohya(TE1)}.lora_up.weight": up2}
    deltas, applied = merge(
        pipe, tmp_path / "l", {"u": (unet_only, 1.0, 1.0), "t": (te_only, 1.0, 1.0)}, (ATTN, TE1, TE2)
    )
    assert applied.warnings == ()
    close(deltas[ATTN], up @ down)  # no alpha = alpha equal to rank
    close(deltas[TE1], up2 @ down2)
    assert not deltas[TE2].any()


def test_locon_tucker_mid_matches_lycoris(pipe, tmp_path):
    weight = weight_of(pipe, CONV)
    down, up, mid = (
        rand(4, weight.shape[1], 1, 1, seed=1),
        rand(weight.shape[0], 4, 1, 1, seed=2),
        rand(4, 4, 3, 3, seed=3),
    )
    stem = kohya(CONV)
    tensors = {
        f"{stem}.lora_down.weight": down,
        f"{stem}.lora_up.weight": up,
        f"{stem}.lora_mid.weight": mid,
        f"{stem}.alpha": torch.tensor(1.0),
    }
    deltas, _ = merge(pipe, tmp_path / "l", {"tucker": (tensors, 1.0, 0.8)}, (CONV,))
    close(deltas[CONV], 0.8 * lycoris_functional.locon.diff_weight(down, up, mid, gamma=1 / 4, backend="torch"))


@pytest.mark.parametrize("writer", ["lycoris_wd_on_out", "onetrainer"])
def test_dora_applies_the_weight_decomposition(pipe, tmp_path, writer):
    weight = weight_of(pipe, ATTN).detach().float()
    down, up = lora_pair(weight, 4, 5)
    on_out = writer == "lycoris_wd_on_out"
    magnitude = (weight.norm(dim=1, keepdim=True) if on_out else weight.norm(dim=0, keepdim=True)) * 1.3
    stem = kohya(ATTN)
    tensors = {
        f"{stem}.lora_down.weight": down,
        f"{stem}.lora_up.weight": up,
        f"{stem}.alpha": torch.tensor(4.0),
        f"{stem}.dora_scale": magnitude,
    }
    deltas, _ = merge(pipe, tmp_path / "l", {"dora": (tensors, 1.0, 0.6)}, (ATTN,))
    merged = lycoris_functional.weight_decompose(weight + up @ down, magnitude, 1, on_out, backend="torch")
    close(deltas[ATTN], 0.6 * (merged - weight))  # A1111/ComfyUI: the multiplier scales W' - W


def test_loha_plain_and_tucker_match_lycoris(pipe, tmp_path):
    lin, conv = weight_of(pipe, ATTN), weight_of(pipe, CONV)
    a, b = kohya(ATTN), kohya(CONV)
    w1a, w1b, w2a, w2b = (
        rand(lin.shape[0], 4, seed=1),
        rand(4, lin.shape[1], seed=2),
        rand(lin.shape[0], 4, seed=3),
        rand(4, lin.shape[1], seed=4),
    )
    # LyCORIS's Tucker LoHa for a 3x3 conv: a and b are (rank, out) and (rank, in), t is rank x rank x kernel.
    t1, t2 = rand(4, 4, 3, 3, seed=5), rand(4, 4, 3, 3, seed=6)
    c1a, c1b, c2a, c2b = (
        rand(4, conv.shape[0], seed=7),
        rand(4, conv.shape[1], seed=8),
        rand(4, conv.shape[0], seed=9),
        rand(4, conv.shape[1], seed=10),
    )
    tensors = {
        f"{a}.hada_w1_a": w1a,
        f"{a}.hada_w1_b": w1b,
        f"{a}.hada_w2_a": w2a,
        f"{a}.hada_w2_b": w2b,
        f"{a}.alpha": torch.tensor(2.0),
        f"{b}.hada_w1_a": c1a,
        f"{b}.hada_w1_b": c1b,
        f"{b}.hada_w2_a": c2a,
        f"{b}.hada_w2_b": c2b,
        f"{b}.hada_t1": t1,
        f"{b}.hada_t2": t2,
        f"{b}.alpha": torch.tensor(4.0),
    }
    deltas, _ = merge(pipe, tmp_path / "l", {"loha": (tensors, 1.0, 1.0)}, (ATTN, CONV))
    close(deltas[ATTN], lycoris_functional.loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=0.5, backend="torch"))
    close(deltas[CONV], lycoris_functional.loha.diff_weight(c1b, c1a, c2b, c2a, t1, t2, gamma=1.0, backend="torch"))


def test_lokr_both_w2_forms_and_both_w1_forms_match_lycoris(pipe, tmp_path):
    lin, conv = weight_of(pipe, ATTN), weight_of(pipe, CONV)  # ATTN: 64 x 80 in the tiny model
    a, b = kohya(ATTN), kohya(CONV)
    # ATTN: full w1 (4 x 4), w2 as w2_a @ w2_b; CONV: w1 as w1_a @ w1_b, full 3x3 w2.
    w1, w2a, w2b = rand(4, 4, seed=1), rand(lin.shape[0] // 4, 2, seed=2), rand(2, lin.shape[1] // 4, seed=3)
    w1a, w1b, cw2 = rand(2, 2, seed=4), rand(2, 4, seed=5), rand(conv.shape[0] // 2, conv.shape[1] // 4, 3, 3, seed=6)
    tensors = {
        f"{a}.lokr_w1": w1,
        f"{a}.lokr_w2_a": w2a,
        f"{a}.lokr_w2_b": w2b,
        f"{a}.alpha": torch.tensor(1.0),
        f"{b}.lokr_w1_a": w1a,
        f"{b}.lokr_w1_b": w1b,
        f"{b}.lokr_w2": cw2,
        f"{b}.alpha": torch.tensor(1.0),
    }
    deltas, _ = merge(pipe, tmp_path / "l", {"lokr": (tensors, 1.0, 1.0)}, (ATTN, CONV))
    close(
        deltas[ATTN],
        lycoris_functional.lokr.diff_weight(w1, None, None, None, w2a, w2b, None, gamma=1.0, backend="torch"),
    )
    close(
        deltas[CONV],
        lycoris_functional.lokr.diff_weight(None, w1a, w1b, cw2, None, None, None, gamma=1.0, backend="torch"),
    )


def test_full_glora_and_ia3(pipe, tmp_path):
    lin = weight_of(pipe, ATTN).detach().float()
    te = weight_of(pipe, TE1).detach().float()
    conv = weight_of(pipe, CONV).detach().float()
    diff, diff_b = rand(*conv.shape, seed=1), rand(conv.shape[0], seed=2)
    a1, a2, b1, b2 = (
        rand(lin.shape[1], 4, seed=3),
        rand(4, lin.shape[1], seed=4),
        rand(lin.shape[0], 4, seed=5),
        rand(4, lin.shape[1], seed=6),
    )
    ia3 = rand(te.shape[1], seed=7)
    a, c, t = kohya(ATTN), kohya(CONV), kohya(TE1)
    tensors = {
        f"{c}.diff": diff,
        f"{c}.diff_b": diff_b,
        f"{a}.a1.weight": a1,
        f"{a}.a2.weight": a2,
        f"{a}.b1.weight": b1,
        f"{a}.b2.weight": b2,
        f"{a}.alpha": torch.tensor(2.0),
        f"{t}.weight": ia3,
        f"{t}.on_input": torch.tensor(1),
    }
    bias_before = pipe.unet.get_submodule(CONV[1]).bias.detach().clone()
    deltas, _ = merge(pipe, tmp_path / "l", {"mixed": (tensors, 0.5, 1.0)}, (ATTN, CONV, TE1))
    close(deltas[CONV], diff)
    close(deltas[ATTN], (lin @ a1 @ a2 + b1 @ b2) * 2.0 / 4)
    close(deltas[TE1], 0.5 * te * ia3[None, :])  # on_input: one scale per input channel
    assert torch.equal(pipe.unet.get_submodule(CONV[1]).bias, bias_before)  # restored


def test_glora_first_layout_and_tucker_bm(pipe, tmp_path):
    """The first LyCORIS GLoRA (A1111's network_glora formula) and LyCORIS's Tucker GLoRA (`bm.weight`)."""
    lin = weight_of(pipe, ATTN).detach().float()  # 64 x 80: the old and new layouts cannot be confused
    conv = weight_of(pipe, CONV).detach().float()
    out, inp = lin.shape
    a1, a2, b1, b2 = rand(4, inp, seed=1), rand(inp, 4, seed=2), rand(4, inp, seed=3), rand(out, 4, seed=4)
    c_out, c_in = conv.shape[:2]
    ca1, ca2 = rand(c_in, 4, 1, 1, seed=5), rand(4, c_in, 1, 1, seed=6)
    cb1, cb2, bm = rand(c_out, 4, 1, 1, seed=7), rand(4, c_in, 1, 1, seed=8), rand(4, 4, 3, 3, seed=9)
    a, c = kohya(ATTN), kohya(CONV)
    tensors = {
        f"{a}.a1.weight": a1,
        f"{a}.a2.weight": a2,
        f"{a}.b1.weight": b1,
        f"{a}.b2.weight": b2,
        f"{a}.alpha": torch.tensor(2.0),
        f"{c}.a1.weight": ca1,
        f"{c}.a2.weight": ca2,
        f"{c}.b1.weight": cb1,
        f"{c}.b2.weight": cb2,
        f"{c}.bm.weight": bm,
        f"{c}.alpha": torch.tensor(1.0),
    }
    deltas, applied = merge(pipe, tmp_path / "l", {"glora": (tensors, 1.0, 0.5)}, (ATTN, CONV))
    assert applied.warnings == ()
    close(deltas[ATTN], 0.5 * (b2 @ b1 + lin @ a2 @ a1) * 2.0 / 4)
    scaled = torch.einsum("o i ..., i j, j k -> o k ...", conv, ca1.flatten(1), ca2.flatten(1))
    expected = scaled + lycoris_functional.tucker_weight_from_conv(cb1, cb2, bm)
    close(deltas[CONV], 0.5 * expected * 1.0 / 4)


def test_first_lycoris_diag_oft_and_kohya_oft(pipe, tmp_path):
    """`oft_diag` (LyCORIS's first Diag-OFT: the rotation itself) and sd-scripts' `networks.oft` (`oft_unet_` names,
    constraint in alpha), as A1111 1.7+ reads them."""
    lin = weight_of(pipe, ATTN).detach().float()  # 64 output channels
    conv = weight_of(pipe, CONV).detach().float()  # 32 output channels
    skew = rand(8, 4, 4, seed=1)
    rotation = torch.linalg.matrix_exp(skew - skew.transpose(1, 2))  # 8 orthogonal 4x4 blocks
    blocks = rand(4, 16, 16, seed=2, scale=0.05)
    tensors = {
        f"{kohya(CONV)}.oft_diag": rotation,
        f"oft_unet_{ATTN_SGM.replace('.', '_')}.oft_blocks": blocks,
        f"oft_unet_{ATTN_SGM.replace('.', '_')}.alpha": torch.tensor(1e-3),
    }
    deltas, applied = merge(pipe, tmp_path / "l", {"oft": (tensors, 1.0, 1.0)}, (ATTN, CONV))
    assert applied.warnings == ()
    rotated = torch.einsum("k n m, k n ... -> k m ...", rotation, conv.unflatten(0, (8, 4))).flatten(0, 1)
    close(deltas[CONV], rotated - conv)
    constraint = 1e-3 * lin.shape[0]
    assert (blocks - blocks.transpose(1, 2)).norm() > constraint
    close(
        deltas[ATTN], lycoris_functional.diag_oft.diff_weight(lin, blocks, None, constraint=constraint, backend="torch")
    )


def test_diag_oft_and_boft_match_lycoris(pipe, tmp_path):
    lin = weight_of(pipe, ATTN).detach().float()  # 64 output channels
    conv = weight_of(pipe, CONV).detach().float()  # 32 output channels
    blocks = rand(8, 8, 8, seed=1, scale=0.05)
    butterfly = rand(2, 8, 4, 4, seed=2, scale=0.05)
    rescale = 1 + rand(conv.shape[0], 1, 1, 1, seed=3, scale=0.1)
    a, c = kohya(ATTN), kohya(CONV)
    tensors = {
        f"{a}.oft_blocks": blocks,
        f"{a}.alpha": torch.tensor(1e-3),
        f"{c}.oft_blocks": butterfly,
        f"{c}.rescale": rescale,
        f"{c}.alpha": torch.tensor(0.0),
    }
    deltas, _ = merge(pipe, tmp_path / "l", {"oft": (tensors, 1.0, 1.0)}, (ATTN, CONV))
    constraint = 1e-3 * lin.shape[0]  # LyCORIS keeps alpha per channel; the norm cap is alpha x out_dim
    assert (blocks - blocks.transpose(1, 2)).norm() > constraint  # so the cap is exercised
    close(
        deltas[ATTN], lycoris_functional.diag_oft.diff_weight(lin, blocks, None, constraint=constraint, backend="torch")
    )
    close(deltas[CONV], lycoris_functional.boft.diff_weight(conv, butterfly, rescale, constraint=0, backend="torch"))


def test_diffusers_peft_and_comfy_native_names(pipe, tmp_path):
    weights = {layer: weight_of(pipe, layer) for layer in (ATTN, CONV, TE1, TE2)}
    pairs = {layer: lora_pair(w, 2, seed=i) for i, (layer, w) in enumerate(weights.items())}
    diffusers = {
        f"unet.{ATTN[1]}.lora.down.weight": pairs[ATTN][0],
        f"unet.{ATTN[1]}.lora.up.weight": pairs[ATTN][1],
        f"text_encoder.text_model.{TE1[1]}.lora_A.weight": pairs[TE1][0],
        f"text_encoder.text_model.{TE1[1]}.lora_B.weight": pairs[TE1][1],
    }
    peft = {
        f"base_model.model.{CONV[1]}.lora_A.weight": pairs[CONV][0],
        f"base_model.model.{CONV[1]}.lora_B.weight": pairs[CONV][1],
        # SimpleTuner's LyCORIS naming, alpha = 2 x rank: twice the pair's product
        f"lycoris_{CONV[1].replace('.', '_')}.lora_down.weight": pairs[CONV][0].clone(),
        f"lycoris_{CONV[1].replace('.', '_')}.lora_up.weight": pairs[CONV][1].clone(),
        f"lycoris_{CONV[1].replace('.', '_')}.alpha": torch.tensor(4.0),
    }
    comfy = {
        f"diffusion_model.{ATTN_SGM}.lora_up.weight": pairs[ATTN][1],
        f"diffusion_model.{ATTN_SGM}.lora_down.weight": pairs[ATTN][0],
        f"text_encoders.clip_g.transformer.{TE2[1]}.lora_up.weight": pairs[TE2][1],
        f"text_encoders.clip_g.transformer.{TE2[1]}.lora_down.weight": pairs[TE2][0],
    }
    deltas, applied = merge(
        pipe,
        tmp_path / "l",
        {"diffusers": (diffusers, 1.0, 1.0), "peft": (peft, 1.0, 1.0), "comfy": (comfy, 1.0, -1.0)},
        tuple(weights),
    )
    assert applied.warnings == ()
    close(deltas[ATTN], torch.zeros_like(deltas[ATTN]))  # diffusers at +1 and ComfyUI at -1 cancel out
    for layer in (CONV, TE1, TE2):
        down, up = pairs[layer]
        times = 3 if layer == CONV else 1  # the peft pair plus the SimpleTuner pair at scale 2
        close(deltas[layer], times * (up.flatten(1) @ down.flatten(1)).reshape(weights[layer].shape))


def test_peft_files_of_either_text_encoder_and_of_the_unet(pipe, tmp_path):
    """peft `save_pretrained` files (`base_model.model.*`, with or without `.default`): a text-encoder name both
    encoders share goes to the one whose sizes the tensors have; no config beside them means scale 1."""
    te1_q = ("text_encoder", "encoder.layers.0.self_attn.q_proj")
    te2_q = ("text_encoder_2", "text_model.encoder.layers.0.self_attn.q_proj")
    layers = (te1_q, te2_q, TE2, ATTN)
    pairs = {layer: lora_pair(weight_of(pipe, layer), 2, seed=3 * i) for i, layer in enumerate(layers)}
    shared = "base_model.model.text_model.encoder.layers.0.self_attn.q_proj"
    te1_file = {  # one file per encoder, as peft saves a PeftModel of one CLIPTextModel
        f"{shared}.lora_A.weight": pairs[te1_q][0],
        f"{shared}.lora_B.weight": pairs[te1_q][1],
    }
    te2_file = {
        f"{shared}.lora_A.default.weight": pairs[te2_q][0],
        f"{shared}.lora_B.default.weight": pairs[te2_q][1],
        f"{TE2[1]}.lora_A.weight": pairs[TE2][0],  # get_peft_model_state_dict's bare names
        f"{TE2[1]}.lora_B.weight": pairs[TE2][1],
    }
    unet_file = {
        f"base_model.model.{ATTN[1]}.lora_A.default.weight": pairs[ATTN][0],
        f"base_model.model.{ATTN[1]}.lora_B.default.weight": pairs[ATTN][1],
    }
    deltas, applied = merge(
        pipe,
        tmp_path / "l",
        {"te1": (te1_file, 0.5, 1.0), "te2": (te2_file, 1.0, 1.0), "unet": (unet_file, 1.0, -1.0)},
        layers,
    )
    assert applied.warnings == () and len(applied.loras) == 3
    for layer in layers:
        down, up = pairs[layer]
        multiplier = {te1_q: 0.5, ATTN: -1.0}.get(layer, 1.0)
        close(deltas[layer], multiplier * up @ down)


def test_peft_adapter_config_and_diffusers_metadata_give_lora_alpha(pipe, tmp_path):
    """peft's scale lora_alpha / r (alpha_pattern per module, lora_alpha / sqrt(r) with use_rslora), from the
    `adapter_config.json` peft saves beside `adapter_model.safetensors` or from diffusers' `lora_adapter_metadata`."""
    import json

    conv_pair, attn_pair = lora_pair(weight_of(pipe, CONV), 4, 1), lora_pair(weight_of(pipe, ATTN), 4, 3)
    peft_file = {
        f"base_model.model.{CONV[1]}.lora_A.weight": conv_pair[0],
        f"base_model.model.{CONV[1]}.lora_B.weight": conv_pair[1],
        f"base_model.model.{ATTN[1]}.lora_A.weight": attn_pair[0],
        f"base_model.model.{ATTN[1]}.lora_B.weight": attn_pair[1],
    }
    folder = tmp_path / "l" / "mystyle"  # peft's save_pretrained folder, copied into the LoRA folder
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "alpha_pattern": {"attn2.to_k": 2}}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    files = {"mystyle/adapter_model": (peft_file, 1.0, 1.0)}
    deltas, applied = merge(pipe, tmp_path / "l", files, (CONV, ATTN))
    assert applied.warnings == () and [lora.entry.name for lora in applied.loras] == ["mystyle"]
    close(deltas[CONV], (conv_pair[1].flatten(1) @ conv_pair[0].flatten(1)).reshape(deltas[CONV].shape) * 8 / 4)
    close(deltas[ATTN], attn_pair[1] @ attn_pair[0] * 2 / 4)

    te_pair = lora_pair(weight_of(pipe, TE1), 2, 5)
    diffusers_file = {
        f"unet.{ATTN[1]}.lora_A.weight": attn_pair[0],
        f"unet.{ATTN[1]}.lora_B.weight": attn_pair[1],
        f"text_encoder.text_model.{TE1[1]}.lora_A.weight": te_pair[0],
        f"text_encoder.text_model.{TE1[1]}.lora_B.weight": te_pair[1],
    }
    metadata = {  # what diffusers' save_lora_weights writes with unet_/text_encoder_lora_adapter_metadata
        "lora_adapter_metadata": json.dumps(
            {
                "unet.r": 4,
                "unet.lora_alpha": 4,
                "unet.use_rslora": True,
                "text_encoder.r": 2,
                "text_encoder.lora_alpha": 1,
            }
        )
    }
    deltas, applied = merge(pipe, tmp_path / "d", {"pipe": (diffusers_file, 1.0, 1.0, metadata)}, (ATTN, TE1))
    assert applied.warnings == ()
    close(deltas[ATTN], attn_pair[1] @ attn_pair[0] * 4 / math.sqrt(4))
    close(deltas[TE1], te_pair[1] @ te_pair[0] * 1 / 2)


def test_bundled_embeddings_load_as_tokens_and_go_away(pipe, tmp_path):
    from lorapipe.generate.encode import encode_prompt

    down, up = lora_pair(weight_of(pipe, ATTN), 2, 1)
    tensors = {
        f"{kohya(ATTN)}.lora_down.weight": down,
        f"{kohya(ATTN)}.lora_up.weight": up,
        "bundle_emb.dwjzstyle.clip_l": rand(2, pipe.text_encoder.config.hidden_size, seed=3, scale=1.0),
        "bundle_emb.dwjzstyle.clip_g": rand(2, pipe.text_encoder_2.config.hidden_size, seed=4, scale=1.0),
    }
    (tmp_path / "l").mkdir()
    save_file(tensors, str(tmp_path / "l" / "bundle.safetensors"))
    registry = LoraRegistry(tmp_path / "l")
    lora_set = FusedLoraSet(pipe, verify=registry.verify_for_loading)
    plain = encode_prompt("a dwjzstyle cat", pipe).hidden
    vocab = len(pipe.tokenizer)
    applied = lora_set.apply([ActiveLora(registry.resolve("bundle"), "bundle", 1.0, 1.0)])
    assert applied.warnings == ()
    assert len(pipe.tokenizer) == vocab + 2 and len(pipe.tokenizer_2) == len(pipe.tokenizer)
    assert not torch.equal(encode_prompt("a dwjzstyle cat", pipe).hidden, plain)
    lora_set.clear()
    assert len(pipe.tokenizer) == vocab
    assert torch.equal(encode_prompt("a dwjzstyle cat", pipe).hidden, plain)


def test_bad_files_are_left_out_with_a_warning_and_the_rest_applies(pipe, tmp_path):
    down, up = lora_pair(weight_of(pipe, ATTN), 2, 1)
    good = {
        f"{kohya(ATTN)}.lora_down.weight": down,
        f"{kohya(ATTN)}.lora_up.weight": up,
        "lora_unet_no_such_layer.lora_down.weight": down.clone(),
        "lora_unet_no_such_layer.lora_up.weight": up.clone(),
    }
    sd15 = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": rand(4, 320),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": rand(320, 4),
    }
    sd15_te = {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": rand(4, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": rand(768, 4),
    }
    wrong_size = {f"{kohya(TE1)}.lora_down.weight": rand(4, 768), f"{kohya(TE1)}.lora_up.weight": rand(768, 4)}
    deltas, applied = merge(
        pipe,
        tmp_path / "l",
        {
            "good": (good, 1.0, 1.0),
            "sd15": (sd15, 1.0, 1.0),
            "sd15te": (sd15_te, 1.0, 1.0),
            "wrong": (wrong_size, 1.0, 1.0),
        },
        (ATTN, TE1),
    )
    close(deltas[ATTN], up @ down)
    assert not deltas[TE1].any()
    assert [lora.mentioned_as for lora in applied.loras] == ["good"]
    text = "\n".join(applied.warnings)
    assert "LoRA good: 2 keys not applied" in text and "lora_unet_no_such_layer" in text
    assert "LoRA sd15: not applied" in text and "SD 1.x/2.x" in text
    assert "LoRA sd15te: not applied" in text
    assert "LoRA wrong: not applied" in text


def test_repeated_tags_merge_and_lora_count_is_capped(pipe):
    from lorapipe.errors import GenerationError
    from lorapipe.generate.generator import GenerationRequest, check_request, merge_lora_tags
    from lorapipe.generate.prompt_syntax import parse_extra_networks

    tags = merge_lora_tags(parse_extra_networks("<lora:a:0.5> x <lora:b> <lora:a:0.25:1>" * 100).loras)
    assert [(t.name, t.te_weight, t.unet_weight) for t in tags] == [("a", 75.0, 150.0), ("b", 100.0, 100.0)]
    check_request(GenerationRequest("<lora:a> " * 500))
    with pytest.raises(GenerationError, match="prompt: 17 different LoRAs; at most 16"):
        check_request(GenerationRequest(" ".join(f"<lora:l{i}>" for i in range(17))))


def test_full_sdxl_architecture_key_names_all_map():
    """On the real SDXL shapes (meta device): every layer a Kohya/LyCORIS file names, in every naming scheme."""
    from lorapipe.lora.file_layers import plan_file
    from lorapipe.lora.keymap import PipelineKeyMap
    from lorapipe.lora.targets import kohya_target_names
    from lorapipe.sdxl.factory import build_models
    from lorapipe.sdxl.sgm_names import UnetNameMap

    models = build_models("full", device="meta")
    keymap = PipelineKeyMap(models)
    targets = kohya_target_names(models["unet"], models["text_encoder"], models["text_encoder_2"], conv=True)
    assert len(targets) == 722 + 264 + 66
    sgm = UnetNameMap(models["unet"].config)
    shapes = {}
    for target in targets:
        layer = keymap.layer(target.kohya_name)
        assert (layer.component, layer.module_name) == (target.part, target.module_name)
        if target.part == "unet":
            assert keymap.layer(f"diffusion_model.{sgm.to_sgm(target.module_name)}") == layer
            assert keymap.layer(f"unet.{target.module_name}") == layer
        out, inp, *kernel = models[target.part].get_submodule(target.module_name).weight.shape
        # A LyCORIS LoHa of every target, shaped as LyCORIS writes it for SDXL.
        shapes |= {
            f"{target.kohya_name}.hada_w1_a": (out, 8),
            f"{target.kohya_name}.hada_w1_b": (8, inp * math.prod(kernel)),
            f"{target.kohya_name}.hada_w2_a": (out, 8),
            f"{target.kohya_name}.hada_w2_b": (8, inp * math.prod(kernel)),
            f"{target.kohya_name}.alpha": (),
        }
    plan = plan_file("loha", shapes, keymap)
    assert len(plan.patches) == len(targets) and plan.dropped == () and plan.networks == ("loha",)
    # peft files of one text encoder share names (`text_model.encoder.layers.N…`): the sizes pick CLIP-L or CLIP-G.
    for part in ("text_encoder", "text_encoder_2"):
        peft = {}
        for target in (t for t in targets if t.part == part):
            out, inp = models[part].get_submodule(target.module_name).weight.shape
            name = (
                target.module_name
                if target.module_name.startswith("text_model.")
                else f"text_model.{target.module_name}"
            )
            peft |= {
                f"base_model.model.{name}.lora_A.weight": (8, inp),
                f"base_model.model.{name}.lora_B.weight": (out, 8),
            }
        plan = plan_file(part, peft, keymap)
        assert plan.dropped == () and len(plan.patches) == len(peft) // 2
        assert {p.layer.component for p in plan.patches} == {part}


def test_a_loha_over_every_layer_renders_and_the_plain_image_comes_back(generator):
    import numpy as np

    from lorapipe.generate.generator import GenerationRequest

    models = {c: getattr(generator.pipe, c) for c in ("unet", "text_encoder", "text_encoder_2")}
    write_loha_for(models, generator.registry.root / "every.safetensors", seed=4)
    small = {"steps": 2, "width": 64, "height": 64, "seed": 5}
    plain = generator.generate(GenerationRequest("a toy", **small))
    with_loha = generator.generate(GenerationRequest("a toy <lora:every:0.8>", **small))
    assert with_loha.warnings == () and [lora.entry.name for lora in with_loha.loras] == ["every"]
    assert not any(p.requires_grad for p in generator.pipe.unet.parameters())  # merging never turns grad on
    assert np.abs(np.asarray(plain.images[0], float) - np.asarray(with_loha.images[0], float)).mean() > 1.0
    again = generator.generate(GenerationRequest("a toy", **small))
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(again.images[0]))  # same pixels as before


def test_a_file_removed_after_the_scan_is_reported_not_raised(pipe, tmp_path):
    down, up = lora_pair(weight_of(pipe, ATTN), 2, 1)
    (tmp_path / "l").mkdir()
    save_file(
        {f"{kohya(ATTN)}.lora_down.weight": down, f"{kohya(ATTN)}.lora_up.weight": up},
        str(tmp_path / "l" / "gone.safetensors"),
    )
    registry = LoraRegistry(tmp_path / "l")
    entry = registry.resolve("gone")
    entry.path.unlink()
    applied = FusedLoraSet(pipe, verify=registry.verify_for_loading).apply([ActiveLora(entry, "gone", 1.0, 1.0)])
    assert applied.loras == () and applied.warnings[0].startswith("LoRA gone: not applied: gone.safetensors")


@pytest.mark.parametrize(
    "preset, options",
    [
        ("full", {"algo": "locon", "conv_dim": 2, "use_tucker": True}),
        ("full", {"algo": "loha", "conv_dim": 2}),
        ("full", {"algo": "lokr", "factor": 8, "use_tucker": True, "conv_dim": 2}),
        ("tiny", {"algo": "locon", "dora_wd": True}),  # dora_scale is the base weight's norm: it needs real weights
    ],
    ids=lambda o: o if isinstance(o, str) else "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_lycoris_files_lorapipe_trains_plan_completely_on_sdxl(preset, options):
    """What `lora/lycoris_network.py` writes (LyCORIS's own modules, SDXL shapes on the meta device) loads key for
    key."""
    from lorapipe.config.model import LycorisOptions
    from lorapipe.lora.file_layers import plan_file
    from lorapipe.lora.keymap import PipelineKeyMap
    from lorapipe.lora.lycoris_network import attach_lycoris
    from lorapipe.sdxl.factory import build_models

    models = build_models(preset, device="meta" if preset == "full" else "cpu")
    network = attach_lycoris(
        models["unet"],
        models["text_encoder"],
        models["text_encoder_2"],
        LycorisOptions(**options),
        network_dim=2,
        network_alpha=1.0,
        lora_dtype=None,
    )
    shapes = network.kohya_shapes()
    plan = plan_file(options["algo"], shapes, PipelineKeyMap(models))
    assert plan.dropped == () and len(plan.patches) == len(
        {key.rsplit(".", 1)[0] for key in shapes if key.endswith(".alpha")}
    )
    expected = {"locon": "lora", "loha": "loha", "lokr": "lokr"}[options["algo"]]
    assert plan.networks == (expected,)
    assert all(p.keys.keys() >= {"dora_scale"} for p in plan.patches) == bool(options.get("dora_wd"))


@pytest.mark.parametrize(
    "options",
    [{"algo": "loha", "conv_dim": 2}, {"algo": "lokr", "factor": 4}, {"algo": "locon", "dora_wd": True}],
    ids=lambda o: o["algo"],
)
def test_lycoris_trained_files_render_what_was_trained(generator, tmp_path, options):
    """A file from lorapipe's LyCORIS trainer, merged at multiplier 1, gives every layer the output LyCORIS's own
    module gave it in training (its forward, the ground truth: LyCORIS 4.1's `get_merged_weight` applies a LoHa's
    alpha/rank twice, so it is not used as the reference)."""
    from lorapipe.config.model import LycorisOptions
    from lorapipe.lora.keymap import PipelineKeyMap
    from lorapipe.lora.lycoris_network import attach_lycoris

    pipe = generator.pipe
    network = attach_lycoris(
        pipe.unet,
        pipe.text_encoder,
        pipe.text_encoder_2,
        LycorisOptions(**options),
        network_dim=4,
        network_alpha=2.0,
        seed=0,
    )
    keymap = PipelineKeyMap({c: getattr(pipe, c) for c in ("unet", "text_encoder", "text_encoder_2")})
    inputs, trained = {}, {}
    try:
        network.network.eval()
        with torch.no_grad():
            for index, param in enumerate(network.lora_parameters()):
                param.add_(rand(*param.shape, seed=index, scale=0.05))
            for module in [m for mods in network.modules.values() for m in mods]:
                layer = keymap.layer(module.lora_name)
                wrapped = getattr(pipe, layer.component).get_submodule(layer.module_name)
                shape = (
                    (2, wrapped.in_features) if isinstance(wrapped, torch.nn.Linear) else (1, wrapped.in_channels, 8, 8)
                )
                inputs[layer] = rand(*shape, seed=len(inputs), scale=1.0)
                trained[layer] = wrapped(inputs[layer])  # LyCORIS's forward replaces the layer's while attached
        state = network.kohya_state_dict()
    finally:
        network.remove()
        for component in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
            component.requires_grad_(False)
    folder = tmp_path / "l"
    folder.mkdir()
    save_file(state, str(folder / "trained.safetensors"))
    registry = LoraRegistry(folder)
    lora_set = FusedLoraSet(pipe, verify=registry.verify_for_loading)
    applied = lora_set.apply([ActiveLora(registry.resolve("trained"), "trained", 1.0, 1.0)])
    try:
        assert applied.warnings == ()
        with torch.no_grad():
            for layer, expected in trained.items():
                rendered = getattr(pipe, layer.component).get_submodule(layer.module_name)(inputs[layer])
                torch.testing.assert_close(rendered, expected, rtol=1e-4, atol=1e-4)
    finally:
        lora_set.clear()


def test_key_spellings_become_kohya_suffixes():
    from lorapipe.lora.keymap import normalise_key, split_key

    stem = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    assert split_key(normalise_key(f"{stem}.processor.to_out_lora.down.weight")) == (
        f"{stem}.to_out.0",
        "lora_down.weight",
    )
    assert split_key(normalise_key(f"{stem}.to_q.lora_B.weight")) == (f"{stem}.to_q", "lora_up.weight")
    assert split_key(normalise_key(f"{stem}.to_q.lora_magnitude_vector")) == (f"{stem}.to_q", "dora_scale")
    assert split_key("lora_unet_x.hada_w1_a") == ("lora_unet_x", "hada_w1_a")
    assert split_key("lora_unet_x.a1.weight") == ("lora_unet_x", "a1.weight")
    assert split_key("lora_unet_x.weight") == ("lora_unet_x", "weight")  # (IA)^3
    assert split_key("lora_unet_x.something_else") is None
