"""Unit checks of the trainer's pieces against sd-scripts' formulas (no model loads except tokenizers)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lorapipe.errors import ConfigError
from lorapipe.train import loss as L
from lorapipe.train import noise as N
from lorapipe.train.naming import SaveCadence, epoch_name, last_name, sample_image_name, step_name
from lorapipe.train.optimizers import build_optimizer, parse_optimizer_args
from lorapipe.train.sampling import load_sample_prompts, parse_prompt_line
from lorapipe.train.schedulers import ScheduleOptions, build_lr_scheduler, resolve_steps


def test_timesteps_are_uniform_integers_in_the_configured_range():
    opts = N.NoiseOptions(min_timestep=100, max_timestep=200)
    t = N.sample_timesteps(4000, opts, torch.Generator().manual_seed(0))
    assert t.min() >= 100 and t.max() <= 199 and t.dtype == torch.long
    assert len(set(t.tolist())) > 90  # spread over the range, not a constant
    same = N.sample_timesteps(3, N.NoiseOptions(min_timestep=500, max_timestep=500), torch.Generator())
    assert same.tolist() == [500, 500, 500]


def test_noise_offset_adds_a_per_channel_constant():
    latents = torch.zeros(2, 4, 8, 8)
    plain = N.make_noise(latents, N.NoiseOptions(), torch.Generator().manual_seed(1))
    offset = N.make_noise(latents, N.NoiseOptions(noise_offset=0.5), torch.Generator().manual_seed(1))
    delta = offset - plain
    # The difference is constant over H, W for each (sample, channel) and not zero.
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-6)
    assert delta.abs().max() > 0.01


def test_multires_noise_is_renormalised_to_unit_std():
    latents = torch.zeros(2, 4, 32, 32)
    noise = N.make_noise(
        latents,
        N.NoiseOptions(multires_noise_iterations=6, multires_noise_discount=0.3),
        torch.Generator().manual_seed(2),
    )
    assert abs(float(noise.std()) - 1.0) < 1e-4


def test_ip_noise_gamma_changes_corruption_but_not_target():
    sched = N.make_noise_scheduler(N.NoiseOptions())
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.tensor([500])
    plain = N.noisy_latents(sched, x0, eps, t, N.NoiseOptions(), torch.Generator().manual_seed(3))
    perturbed = N.noisy_latents(sched, x0, eps, t, N.NoiseOptions(ip_noise_gamma=0.1), torch.Generator().manual_seed(3))
    assert not torch.allclose(plain, perturbed)
    assert N.prediction_target(sched, x0, eps, t, N.NoiseOptions(ip_noise_gamma=0.1)) is eps


def test_v_target_is_the_velocity():
    opts = N.NoiseOptions(v_parameterization=True)
    sched = N.make_noise_scheduler(opts)
    x0, eps, t = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.tensor([300])
    a = sched.alphas_cumprod[300]
    expected = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(N.prediction_target(sched, x0, eps, t, opts), expected, atol=1e-5)


def test_snr_table_matches_alphas():
    sched = N.make_noise_scheduler(N.NoiseOptions())
    snr = N.snr_table(sched)
    a = sched.alphas_cumprod[10]
    assert math.isclose(float(snr[10]), float(a / (1 - a)), rel_tol=1e-5)
    assert snr[0] > snr[999]


def test_min_snr_and_debiased_weights_follow_sd_scripts():
    sched = N.make_noise_scheduler(N.NoiseOptions())
    snr = N.snr_table(sched)
    t = torch.tensor([10, 900])
    w = L.snr_weights(t, snr, L.LossOptions(min_snr_gamma=5.0))
    s = snr[t]
    assert torch.allclose(w, torch.minimum(s, torch.tensor(5.0)) / s)
    assert w[0] < 1 and math.isclose(float(w[1]), 1.0)  # low-noise steps are down-weighted
    d = L.snr_weights(t, snr, L.LossOptions(debiased_estimation_loss=True))
    assert torch.allclose(d, 1 / torch.sqrt(torch.clamp(s, max=1000)))
    v = L.snr_weights(t, snr, L.LossOptions(min_snr_gamma=5.0, v_parameterization=True))
    assert torch.allclose(v, torch.minimum(s, torch.tensor(5.0)) / (s + 1))


def test_huber_and_smooth_l1_formulas():
    pred, target = torch.tensor([[3.0]]), torch.tensor([[1.0]])
    c = torch.tensor([0.5])
    huber = L.element_loss(pred, target, L.LossOptions(loss_type="huber"), c)
    assert math.isclose(float(huber), 2 * 0.5 * (math.sqrt(4 + 0.25) - 0.5), rel_tol=1e-6)
    smooth = L.element_loss(pred, target, L.LossOptions(loss_type="smooth_l1"), c)
    assert math.isclose(float(smooth), 2 * (math.sqrt(4 + 0.25) - 0.5), rel_tol=1e-6)
    sched = N.make_noise_scheduler(N.NoiseOptions())
    const = L.huber_c_per_sample(
        torch.tensor([1, 999]),
        L.LossOptions(huber_schedule="constant", huber_c=0.2, huber_scale=2.0),
        sched.alphas_cumprod,
    )
    assert torch.allclose(const, torch.tensor([0.4, 0.4]))
    snr_c = L.huber_c_per_sample(torch.tensor([1, 999]), L.LossOptions(), sched.alphas_cumprod)
    assert snr_c[0] > snr_c[1] >= 0.1  # large c (l2-like) at low noise, towards huber_c at high noise


def test_loss_weights_scale_each_sample():
    sched = N.make_noise_scheduler(N.NoiseOptions())
    pred, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    t = torch.tensor([100, 100])
    base = L.training_loss(
        pred, target, t, torch.tensor([1.0, 1.0]), L.LossOptions(), N.snr_table(sched), sched.alphas_cumprod
    )
    half = L.training_loss(
        pred, target, t, torch.tensor([1.0, 0.0]), L.LossOptions(), N.snr_table(sched), sched.alphas_cumprod
    )
    assert math.isclose(float(base), 1.0) and math.isclose(float(half), 0.5)


def test_optimizer_args_are_python_literals():
    assert parse_optimizer_args(["weight_decay=0.01", "betas=0.9,0.99", "relative_step=False"]) == {
        "weight_decay": 0.01,
        "betas": (0.9, 0.99),
        "relative_step": False,
    }
    with pytest.raises(ConfigError, match="optimizer_args"):
        parse_optimizer_args(["weight_decay"])


def _groups():
    return [
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.1},
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.2},
    ]


def test_optimizers_kohya_names():
    opt, choice = build_optimizer("AdamW", ["weight_decay=0.05"], _groups(), 1e-3)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[1]["lr"] == 0.2
    assert choice.metadata_string() == "torch.optim.adamw.AdamW(weight_decay=0.05)"
    sgd, _ = build_optimizer("SGDNesterov", [], _groups(), 1e-3)
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    ada, choice = build_optimizer("Adafactor", [], _groups(), 1e-3)
    assert choice.adafactor_relative_step and "lr" not in {k for k, v in ada.param_groups[0].items() if v}
    fixed, choice = build_optimizer("Adafactor", ["relative_step=False", "scale_parameter=False"], _groups(), 1e-3)
    assert not choice.adafactor_relative_step and fixed.param_groups[0]["lr"] == 0.1
    with pytest.raises(ConfigError, match="CUDA"):
        build_optimizer("AdamW8bit", [], _groups(), 1e-3, device_type="cpu")
    with pytest.raises(ConfigError, match="optimizer_type"):
        build_optimizer("NoSuchOpt", [], _groups(), 1e-3)


def test_lr_schedules_warmup_and_cosine():
    assert resolve_steps(0.1, 200) == 20 and resolve_steps(5, 200) == 5
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_lr_scheduler(opt, ScheduleOptions(lr_scheduler="cosine", lr_warmup_steps=0.1), 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and math.isclose(lrs[10], 1.0) and lrs[99] < 0.01


def test_file_names_and_cadence():
    assert epoch_name("toy", 1) == "toy-000001"
    assert step_name("toy", 500) == "toy-step00000500"
    assert last_name("toy") == "toy" and last_name(None) == "last"
    name = sample_image_name("toy", epoch=None, step=20, prompt_index=1, seed=7, when=0)
    assert name.startswith("toy_000020_01_") and name.endswith("_7.png")
    assert sample_image_name(None, epoch=2, step=5, prompt_index=0, seed=None, when=0).startswith("e000002_00_")
    cadence = SaveCadence(save_every_n_epochs=1, save_every_n_steps=10, save_last_n_epochs=2, save_last_n_steps=20)
    assert cadence.saves_at_epoch_end(1, 3) and not cadence.saves_at_epoch_end(3, 3)
    assert cadence.epoch_to_remove(3) == 1 and cadence.epoch_to_remove(2) is None
    assert cadence.saves_at_step(30) and not cadence.saves_at_step(35)
    assert cadence.step_to_remove(40) == 10  # keeps the files of the last 20 steps (20, 30, 40)


def test_prompt_line_options():
    p = parse_prompt_line("dwjz toy on a beach --n blurry, bad --w 1030 --h 64 --s 2000 --d 42 --l 5.5 --ss euler_a")
    assert (p.prompt, p.negative_prompt, p.width, p.height) == ("dwjz toy on a beach", "blurry, bad", 1024, 64)
    assert (p.steps, p.seed, p.scale, p.sampler) == (1000, 42, 5.5, "euler_a")
    assert parse_prompt_line("just a prompt").width == 512


def test_prompt_files_txt_toml_json(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\n\nfirst --d 1\nsecond\n")
    assert [p.prompt for p in load_sample_prompts(txt)] == ["first", "second"]
    toml = tmp_path / "p.toml"
    toml.write_text('[prompt]\nwidth = 64\nheight = 64\n[[prompt.subset]]\nprompt = "a"\nseed = 3\n')
    (a,) = load_sample_prompts(toml)
    assert (a.prompt, a.width, a.seed) == ("a", 64, 3)
    toml.write_text('[prompt]\nwidth = 64\n[[prompt.subset]]\nprompt = "a"\nwidth = 128\n')
    with pytest.raises(ConfigError, match="width"):
        load_sample_prompts(toml)
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["x --w 96", {"prompt": "y", "sample_steps": 4}]))
    x, y = load_sample_prompts(js)
    assert x.width == 96 and y.steps == 4
    with pytest.raises(ConfigError, match="sample_prompts"):
        load_sample_prompts(tmp_path / "missing.txt")


def test_long_captions_are_chunked_like_sd_scripts(tiny_model_dir):
    from transformers import CLIPTokenizer

    from lorapipe.train.text_encoding import tokenize_chunks

    tok = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer_2")  # pads with "!" (id 0), like SDXL's TE2
    caption = ", ".join(["red toy"] * 60)  # ~120 tokens
    ids = tokenize_chunks(tok, [caption], 150)
    assert ids.shape == (1, 2, 77)
    assert (ids[0, :, 0] == tok.bos_token_id).all()
    assert ids[0, 0, -1] == tok.eos_token_id  # first chunk cut mid-caption ends in EOS
    assert tok.eos_token_id in ids[0, 1].tolist()
    short = tokenize_chunks(tok, ["red toy"], 225)
    assert short.shape == (1, 3, 77) and short[0, 2, 1] == tok.eos_token_id  # empty chunk starts with EOS


def test_latent_disk_cache_is_reused_until_the_pixels_change(tmp_path):
    import numpy as np

    from lorapipe.train.caching import LatentCache, latent_cache_path

    calls = []

    def encode(pixels, keys):
        calls.append(len(keys))
        return torch.from_numpy(pixels.astype(np.float32)).mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).expand(-1, 4, 2, 2)

    image = tmp_path / "01-toy.png"
    pixels = np.full((16, 16, 3), 7, np.uint8)
    first = LatentCache(encode, "vae-a", to_disk=True)
    a = first.latents([pixels, pixels], [image, image], [(40, 30), (40, 30)])
    assert calls == [2]
    assert latent_cache_path(image, (40, 30)).name == "01-toy_0040x0030_sdxl.npz"
    assert latent_cache_path(image, (40, 30)).is_file()
    calls.clear()
    second = LatentCache(encode, "vae-a", to_disk=True)  # a new run: served from disk, no encoding
    b = second.latents([pixels], [image], [(40, 30)])
    assert calls == [] and second.disk_hits == 1 and torch.equal(a[0], b[0])
    changed = pixels.copy()
    changed[0, 0, 0] = 200  # the image (or its bucket/resize) changed: the stale entry is not used
    second.latents([changed], [image], [(40, 30)])
    assert calls == [1]
    calls.clear()
    LatentCache(encode, "vae-b", to_disk=True).latents([pixels], [image], [(40, 30)])  # another VAE
    assert calls == [1]
