"""Build the live parts of a run from its plan: accelerator, models with LoRA, optimizer, LR schedule, caches,
and the objective (noise scheduler + options)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from lorapipe.lora.lycoris_network import LycorisKohyaNetwork
from lorapipe.train.caching import LatentCache, TextEncoderCache, caption_randomiser, module_fingerprint
from lorapipe.train.distributed import share_main_weights
from lorapipe.train.loop import Objective
from lorapipe.train.loss import LossOptions
from lorapipe.train.models import SpeedOptions, TrainModels, load_train_models
from lorapipe.train.noise import NoiseOptions, make_noise_scheduler, snr_table
from lorapipe.train.optimizers import OptimizerChoice, build_optimizer
from lorapipe.train.plan import RunPlan
from lorapipe.train.schedulers import ScheduleOptions, build_lr_scheduler


@dataclass
class TrainSession:
    """The mutable training objects of one run (kept together so the loop's signature stays short)."""

    accelerator: Any
    models: TrainModels
    optimizer: Any
    lr_scheduler: Any
    optimizer_choice: OptimizerChoice
    objective: Objective
    latent_cache: LatentCache | None
    te_cache: TextEncoderCache | None
    param_group_names: list[str]
    te_cache_automatic: bool = False  # filled on first use of each caption, not before the first step
    notes: tuple[str, ...] = ()  # lines for the run's log (what was decided for the user)

    @property
    def scaler(self):
        return getattr(self.accelerator, "scaler", None)

    def learning_rates(self) -> dict[str, float]:
        groups = self.optimizer.param_groups
        if self.optimizer_choice.adafactor_relative_step:
            lrs = self.lr_scheduler.get_lr()
            return {name: float(lr) for name, lr in zip(self.param_group_names, lrs)}
        return {name: float(g["lr"]) for name, g in zip(self.param_group_names, groups)}


# Below this many U-Net parameters every CPU op is tiny and intra-op threads only add synchronisation (10-20x
# slower per op on a busy 2-core machine); the tiny test/demo model has ~2M.
_SMALL_MODEL_PARAMS = 50_000_000


def cpu_threads_for(unet) -> int | None:
    """One thread for small models on CPU unless the user chose (OMP_NUM_THREADS); None = leave torch's default."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return 1 if sum(p.numel() for p in unet.parameters()) < _SMALL_MODEL_PARAMS else None


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def build_session(plan: RunPlan, speed: SpeedOptions = SpeedOptions()) -> TrainSession:
    """Load models and build everything the loop needs; nothing here writes to the output folder."""
    from accelerate import Accelerator

    cfg = plan.config
    device = pick_device()
    # Accumulation is counted by the loop (batches come from the dataset layer, not a prepared DataLoader); the
    # accelerator handles device, autocast and the fp16 grad scaler.
    accelerator = _accelerator(
        Accelerator,
        mixed_precision=cfg.mixed_precision or "no",
        cpu=device.type == "cpu",
        gradient_accumulation_steps=1,
    )
    models = load_train_models(
        cfg, plan.base_model, accelerator.device, max_token_length=plan.max_token_length, seed=plan.seed, speed=speed
    )
    if device.type == "cpu" and (threads := cpu_threads_for(models.unet)):
        torch.set_num_threads(threads)
    loraplus = cfg.lycoris or cfg.network_options  # LoRA+ ratios come from the network_args of either module
    groups = models.network.parameter_groups(
        cfg.unet_lr,
        cfg.text_encoder_lr,
        cfg.learning_rate,
        loraplus_unet_lr_ratio=loraplus.loraplus_unet_lr_ratio,
        loraplus_text_encoder_lr_ratio=loraplus.loraplus_text_encoder_lr_ratio,
    )
    names = [g.pop("name", f"group{i}") for i, g in enumerate(groups)]
    if plan.processes.is_distributed:
        share_main_weights([p for g in groups for p in g["params"]])
    optimizer, choice = build_optimizer(
        cfg.optimizer_type, cfg.optimizer_args, groups, cfg.learning_rate, device_type=device.type
    )
    lr_scheduler = build_lr_scheduler(
        optimizer,
        cfg.options(ScheduleOptions),
        plan.total_steps,
        adafactor_relative_step=choice.adafactor_relative_step,
    )
    optimizer = accelerator.prepare_optimizer(optimizer)
    noise_opts = cfg.options(NoiseOptions)
    noise_scheduler = make_noise_scheduler(noise_opts)
    objective = Objective(
        noise=noise_opts,
        loss=cfg.options(LossOptions),
        noise_scheduler=noise_scheduler,
        snr=snr_table(noise_scheduler),
        alphas_cumprod=noise_scheduler.alphas_cumprod,
    )
    latent_cache = te_cache = None
    # The weight fingerprints (a hash of every VAE / text-encoder weight) only guard caches read back from disk.
    if cfg.cache_latents or cfg.cache_latents_to_disk:
        to_disk = bool(cfg.cache_latents_to_disk)
        latent_cache = LatentCache(
            _seeded_vae_encoder(models), module_fingerprint(models.vae) if to_disk else "", to_disk=to_disk
        )
    automatic = None
    if cfg.cache_text_encoder_outputs or cfg.cache_text_encoder_outputs_to_disk:
        to_disk = bool(cfg.cache_text_encoder_outputs_to_disk)
        fingerprint = (
            module_fingerprint(models.text_encoder) + module_fingerprint(models.text_encoder_2) if to_disk else ""
        )
        te_cache = TextEncoderCache(
            _no_grad(models.encode_captions),
            f"{fingerprint}:{plan.max_token_length}",
            to_disk=to_disk,
            te1_width=models.te1_width,
        )
    elif speed.cache_text_automatically and (automatic := automatic_text_cache(plan, _text_entry_bytes(plan, models))):
        te_cache = TextEncoderCache(
            _no_grad(models.encode_captions), f":{plan.max_token_length}", to_disk=False, te1_width=models.te1_width
        )
    return TrainSession(
        accelerator=accelerator,
        models=models,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        optimizer_choice=choice,
        objective=objective,
        latent_cache=latent_cache,
        te_cache=te_cache,
        param_group_names=names,
        te_cache_automatic=automatic is not None,
        notes=tuple(note for note in (_network_note(cfg, models.network), automatic) if note),
    )


# The automatic text-encoder cache is held in memory: up to this size (about 1,700 distinct 75-token captions
# on SDXL, 4 bytes a value); above it only cache_text_encoder_outputs[_to_disk] caches, as the user chose.
_AUTOMATIC_TEXT_CACHE_BYTES = 1 << 30


def automatic_text_cache(plan: RunPlan, entry_bytes: int) -> str | None:
    """The log line when text-encoder outputs can be cached without being asked, else None (`entry_bytes`: one
    caption's cached outputs).

    They can when the text encoders are frozen (network_train_unet_only) and no caption changes between uses (no
    shuffle, dropout, token warm-up or wildcards): then every step would encode the same captions again, which
    is what Kohya's cache_text_encoder_outputs avoids. The outputs are the same either way (cached in float32)."""
    cfg = plan.config
    if cfg.train_text_encoder or caption_randomiser(cfg.dataset):
        return None
    captions = len({(item.subset.name, item.caption) for item in plan.scan.items})
    if captions * entry_bytes > _AUTOMATIC_TEXT_CACHE_BYTES:
        return None
    return (
        f"text-encoder outputs cached in memory ({captions} captions, {captions * entry_bytes / 2**20:.1f} MiB): "
        "the text encoders are frozen and captions do not change, so each caption is encoded once, as with "
        "cache_text_encoder_outputs"
    )


def _network_note(cfg, network) -> str | None:
    """The log line when a lycoris.kohya network was attached as peft LoRA layers (`lycoris_network.plain_lora`)."""
    if cfg.lycoris is None or isinstance(network, LycorisKohyaNetwork):
        return None
    return (
        f"lycoris.kohya algo=locon, preset={cfg.lycoris.preset}, without LyCORIS's extras is plain LoRA: trained "
        "with peft's LoRA layers, saved with the keys and alphas LyCORIS writes"
    )


def _text_entry_bytes(plan: RunPlan, models: TrainModels) -> int:
    """float32 bytes of one caption's context (both encoders' widths) and pooled vector."""
    te2 = models.text_encoder_2.config
    width = models.te1_width + int(te2.hidden_size)
    return 4 * ((plan.max_token_length + 2) * width + int(getattr(te2, "projection_dim", te2.hidden_size)))


def _accelerator(cls, **kwargs):
    """accelerate keeps one process-wide state and refuses a second run with another mixed_precision; in a
    single-process run (tests, the Python API) we reset it, since each lorapipe run is independent."""
    try:
        return cls(**kwargs)
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()  # private, but the documented way accelerate's own tests start over
        return cls(**kwargs)


def _seeded_vae_encoder(models: TrainModels):
    """Cached latents are sampled once, with a generator seeded by the pixels' hash (same image, same latent)."""

    def encode(pixels, keys):
        outs = [
            models.encode_pixels(
                pixels[i : i + 1], torch.Generator(device=models.device).manual_seed(int(keys[i][:15], 16))
            )
            for i in range(len(keys))
        ]
        return torch.cat(outs)

    return encode


def _no_grad(fn):
    def wrapped(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapped
