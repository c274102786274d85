"""The full preset is SDXL 1.0 base: same module names and parameter counts (built on meta, no weights)."""

from lorapipe.sdxl.factory import build_models
from lorapipe.sdxl.presets import unet_config
from lorapipe.sdxl.sgm_names import UnetNameMap


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_full_parameter_counts():
    models = build_models("full", device="meta")
    # Published figures: UNet 2.567 B, CLIP ViT-L text 123.1 M, OpenCLIP bigG text (with projection) 694.7 M.
    assert _count(models["unet"]) == 2_567_463_684
    assert abs(_count(models["text_encoder"]) - 123_060_480) < 1_000
    assert abs(_count(models["text_encoder_2"]) - 694_659_840) < 1_000
    assert abs(_count(models["vae"]) - 83_653_863) < 1_000


def test_sgm_names_cover_every_full_unet_parameter():
    unet = build_models("full", device="meta")["unet"]
    names = UnetNameMap(unet_config("full")).sgm_names([n for n, _ in unet.named_parameters()])
    assert len(set(names.values())) == len(names)  # one-to-one
    assert (
        names["down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight"]
        == "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight"
    )
    assert names["up_blocks.0.attentions.2.proj_out.weight"] == "output_blocks.2.1.proj_out.weight"
    assert names["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"
    assert names["mid_block.resnets.1.conv2.weight"] == "middle_block.2.out_layers.3.weight"
