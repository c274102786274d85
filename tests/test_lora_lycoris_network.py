"""lycoris.kohya networks hold exactly the keys and shapes LyCORIS itself writes for SDXL under sd-scripts.

The proof runs LyCORIS's own `create_network`, unmodified, on a module tree shaped like sd-scripts' SDXL UNet (SGM
module paths, the block class names LyCORIS selects by, the same Linear/Conv2d leaves) and on CLIP encoders under
the `text_model.` path sd-scripts' transformers 4 has, all on the meta device at full SDXL size; lorapipe's network
on the diffusers models must give the same state-dict keys and shapes.
"""

from __future__ import annotations

import re

import pytest
import torch

from lorapipe.config.lycoris_args import LYCORIS_PRESETS
from lorapipe.config.model import LycorisOptions
from lorapipe.lora.lycoris_network import attach_lycoris, plain_lora
from lorapipe.lora.network import attach_kohya_lora
from lorapipe.sdxl.factory import build_models
from lorapipe.sdxl.sgm_names import UnetNameMap

_BLOCK_CLASSES = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
_SGM_BLOCK = re.compile(r"^(input_blocks\.\d+\.\d+|output_blocks\.\d+\.\d+|middle_block\.\d+)")


def _sgm_shaped_unet(unet: torch.nn.Module, device: str) -> torch.nn.Module:
    """sd-scripts' SDXL UNet as LyCORIS sees it: blocks of the same classes at SGM paths, same leaves."""
    names = UnetNameMap(unet.config)
    root = torch.nn.Module()
    block_class = {name: type(name, (torch.nn.Module,), {}) for name in _BLOCK_CLASSES}
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        ancestors = [a for a in _ancestors(unet, name) if type(a[1]).__name__ in _BLOCK_CLASSES]
        if not ancestors:
            continue  # conv_in, time/label embedding, conv_out: other module types in sd-scripts' UNet
        sgm = names.to_sgm(name)
        block_path = _SGM_BLOCK.match(sgm).group(1)
        block = _ensure(root, block_path, block_class[type(ancestors[-1][1]).__name__])
        leaf = (
            torch.nn.Linear(module.in_features, module.out_features, device=device)
            if isinstance(module, torch.nn.Linear)
            else torch.nn.Conv2d(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                device=device,
            )
        )
        _ensure(block, sgm[len(block_path) + 1 :], None, leaf)
    # sd-scripts' attention modules (attn1/attn2) are of class CrossAttention: `preset=attn-only` selects by it.
    cross_attention = type("CrossAttention", (torch.nn.Module,), {})
    for name, module in unet.named_modules():
        if type(module).__name__ == "Attention":
            root.get_submodule(names.to_sgm(f"{name}.to_q").removesuffix(".to_q")).__class__ = cross_attention
    return root


def _ancestors(model: torch.nn.Module, name: str) -> list[tuple[str, torch.nn.Module]]:
    parts = name.split(".")
    return [(".".join(parts[:i]), model.get_submodule(".".join(parts[:i]))) for i in range(1, len(parts))]


def _ensure(root: torch.nn.Module, path: str, cls: type | None, leaf: torch.nn.Module | None = None):
    node = root
    parts = path.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not hasattr(node, part):
            node.add_module(
                part, leaf if (last and leaf is not None) else (cls() if last and cls else torch.nn.Module())
            )
        node = getattr(node, part)
    return node


def _transformers4_path(encoder: torch.nn.Module) -> torch.nn.Module:
    """transformers 5's CLIPTextModel dropped the `text_model.` level that sd-scripts' transformers 4 has."""
    if hasattr(encoder, "text_model"):
        return encoder
    holder = torch.nn.Module()
    holder.add_module("text_model", encoder)
    return holder


@pytest.mark.parametrize(
    "preset, device, args, options",
    [
        (
            "full",
            "meta",
            {"algo": "loha", "conv_dim": 2, "conv_alpha": 1},
            LycorisOptions(algo="loha", conv_dim=2, conv_alpha=1),
        ),
        (
            "full",
            "meta",
            {"algo": "lokr", "factor": 8, "use_tucker": True, "conv_dim": 2},
            LycorisOptions(algo="lokr", factor=8, use_tucker=True, conv_dim=2),
        ),
        # DoRA's dora_scale is the base weight's norm, so it needs real weights: the tiny model (same block layout).
        ("tiny", "cpu", {"algo": "locon", "dora_wd": True}, LycorisOptions(algo="locon", dora_wd=True)),
        ("full", "meta", {"algo": "lora", "preset": "attn-only"}, LycorisOptions(algo="lora", preset="attn-only")),
    ],
)
def test_sdxl_keys_and_shapes_equal_lycoris_under_sd_scripts(preset, device, args, options) -> None:
    from lycoris.kohya import create_network

    models = build_models(preset, device=device)
    unet, te1, te2 = models["unet"], models["text_encoder"], models["text_encoder_2"]
    # On meta, the base weights have no data; the (small, rank-2) LyCORIS tensors are real CPU tensors.
    reference = create_network(
        1.0,
        2,
        1.0,
        None,
        [_transformers4_path(te1), _transformers4_path(te2)],
        _sgm_shaped_unet(unet, device),
        **{"preset": "full", **{k: str(v) for k, v in args.items()}},
    )
    reference.apply_to([], [], apply_text_encoder=True, apply_unet=True)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    for lora in reference.loras:
        lora.restore()
    ours = attach_lycoris(unet, te1, te2, options, network_dim=2, network_alpha=1.0, lora_dtype=None)
    try:
        assert ours.kohya_shapes() == expected
        if options.preset == "attn-only":  # SDXL's 140 attention modules x 4 projections; CLIP's 12 and 32 layers x 4
            assert ours.num_modules == {"unet": 560, "text_encoder": 48, "text_encoder_2": 128}
        elif preset == "full":  # Kohya LoCon's module count on SDXL: 788 UNet, 72 + 192 text-encoder modules
            assert ours.num_modules == {"unet": 788, "text_encoder": 72, "text_encoder_2": 192}
    finally:
        ours.remove()


def test_module_set_is_kohya_locon_and_training_changes_only_the_network(tiny_model_dir) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    te1 = CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder")
    te2 = CLIPTextModelWithProjection.from_pretrained(tiny_model_dir / "text_encoder_2")
    kohya = attach_kohya_lora(unet, te1, te2, network_dim=4, conv_dim=4)
    locon_stems = {key.split(".")[0] for key in kohya.kohya_shapes()}
    kohya.remove()
    net = attach_lycoris(unet, te1, te2, LycorisOptions(algo="loha"), network_dim=4, network_alpha=1, seed=0)
    assert {key.split(".")[0] for key in net.kohya_shapes()} == locon_stems
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    groups = net.parameter_groups(1e-3, None, 1e-3)
    optimizer = torch.optim.AdamW([g["params"] for g in groups][0], lr=1e-2)
    net.train_mode()
    sample = torch.randn(1, 4, 16, 16)
    cond = {"text_embeds": torch.randn(1, 32), "time_ids": torch.zeros(1, 6)}
    kwargs = {
        "encoder_hidden_states": torch.randn(1, 77, unet.config.cross_attention_dim),
        "added_cond_kwargs": {
            **cond,
            "text_embeds": torch.randn(
                1, unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
            ),
        },
    }
    before = unet(sample, 10, **kwargs).sample.detach()
    for _ in range(3):
        loss = unet(sample, 10, **kwargs).sample.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = unet(sample, 10, **kwargs).sample.detach()
    assert not torch.allclose(before, after)  # the LoHa learned something
    assert all(torch.equal(base[k], v) for k, v in unet.state_dict().items())  # the base stayed frozen
    state = net.kohya_state_dict()
    net.remove()
    assert torch.allclose(unet(sample, 10, **kwargs).sample, before, atol=1e-6)  # removed = the base again
    assert any(k.endswith(".hada_w1_a") for k in state) and all(k.startswith(("lora_unet_", "lora_te")) for k in state)


def test_lycoris_loha_trains_saves_and_resumes_like_sd_scripts(tiny_model_dir, sample_dataset_dir, tmp_path):
    import json

    from safetensors import safe_open

    from lorapipe.train.run import run_training

    args = '["algo=loha", "conv_dim=2", "conv_alpha=1", "rank_dropout=0.1", "module_dropout=0.1"]'
    common = (
        'network_module="lycoris.kohya"',
        f"network_args={args}",
        "network_dim=4",
        "network_alpha=2",
        "unet_lr=0.001",
        "text_encoder_lr=0.0005",
        "scale_weight_norms=1.0",
        "seed=3",
    )
    result = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "out",
        show_progress=False,
        step_lines=False,
        overrides=(*common, "max_train_steps=3", "save_state=true"),
    )
    assert result.status == "finished" and result.steps_done == 3
    with safe_open(str(result.lora_path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        w2 = {k: f.get_tensor(k) for k in keys if k.endswith(".hada_w2_a")}
    assert meta["ss_network_module"] == "lycoris.kohya" and meta["ss_network_dim"] == "4"
    assert json.loads(meta["ss_network_args"])["algo"] == "loha"
    assert any(k.startswith("lora_unet_input_blocks_") and k.endswith(".hada_w1_a") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_") for k in keys)
    assert all(not k.startswith("lora_unet_down_blocks") for k in keys)  # SGM names only, as sd-scripts writes
    assert w2 and any(t.abs().max() > 0 for t in w2.values())
    # A second run continues from the saved state (LyCORIS tensors restored by name).
    state = next(p for p in (tmp_path / "out").iterdir() if p.is_dir() and p.name.endswith("-state"))
    resumed = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "again",
        show_progress=False,
        step_lines=False,
        overrides=(*common, "max_train_steps=4", f'resume="{state}"'),
    )
    assert resumed.status == "finished" and resumed.steps_done == 4


@pytest.mark.parametrize("preset", LYCORIS_PRESETS)
def test_plain_locon_through_peft_holds_lycoris_tensors_and_computes_its_update(tiny_model_dir, preset) -> None:
    """`algo=lora` without LyCORIS's extras trains as peft LoRA layers: same keys, shapes and alphas as LyCORIS's
    own LoCon modules on every preset, and the same UNet and text-encoder outputs from the same tensors."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    te1 = CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder")
    te2 = CLIPTextModelWithProjection.from_pretrained(tiny_model_dir / "text_encoder_2")
    options = LycorisOptions(algo="locon", preset=preset, conv_dim=2)
    plain = plain_lora(options, network_dim=4, network_alpha=2.0)
    assert plain is not None
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randint(0, te1.config.vocab_size, (1, 77), generator=torch.Generator().manual_seed(1))
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))
    added = {
        "text_embeds": torch.randn(
            1, unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        ),
        "time_ids": torch.zeros(1, 6),
    }

    def outputs():
        with torch.no_grad():
            return (
                unet(sample, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample,
                te1(text).last_hidden_state,
                te2(text).text_embeds,
            )

    reference = attach_lycoris(unet, te1, te2, options, network_dim=4, network_alpha=2.0, seed=0)
    with torch.no_grad():
        for key, tensor in reference.network.state_dict().items():
            if key.endswith(".lora_up.weight"):  # zero at the start; any update must show in the outputs
                tensor.normal_(std=0.05, generator=torch.Generator().manual_seed(len(key)))
    state = reference.kohya_state_dict()
    expected = outputs()
    reference.remove()

    ours = attach_kohya_lora(
        unet,
        te1,
        te2,
        network_dim=4,
        network_alpha=2.0,
        conv_dim=plain.conv_dim,
        conv_alpha=plain.conv_alpha,
        target_classes=plain.classes,
    )
    assert ours.kohya_shapes() == {key: tuple(tensor.shape) for key, tensor in state.items()}
    # The alphas as built (loading a file would overwrite them).
    assert {k: float(v) for k, v in ours.kohya_state_dict().items() if k.endswith(".alpha")} == {
        k: float(v) for k, v in state.items() if k.endswith(".alpha")
    }
    report = ours.load_kohya_state_dict(state)
    assert not report.missing and not report.unexpected
    for got, want in zip(outputs(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ours.remove()


@pytest.mark.parametrize(
    "options",
    [
        LycorisOptions(algo="loha"),
        LycorisOptions(algo="locon", dora_wd=True),
        LycorisOptions(algo="locon", rank_dropout=0.1),
        LycorisOptions(algo="locon", use_tucker=True),  # preset full: Tucker changes the 3x3 conv modules
    ],
)
def test_lycoris_extras_keep_lycoris_own_modules(options) -> None:
    assert plain_lora(options, network_dim=4, network_alpha=1.0) is None
    assert plain_lora(None, network_dim=4, network_alpha=1.0) is None
