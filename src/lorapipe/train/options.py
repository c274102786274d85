"""Small frozen option bundles cut out of a TrainConfig, so each module gets the few values it needs."""

from __future__ import annotations

from lorapipe.sdxl.constants import NUM_TRAIN_TIMESTEPS
from lorapipe.train.loss import LossOptions
from lorapipe.train.naming import SaveCadence
from lorapipe.train.noise import NoiseOptions
from lorapipe.train.schedulers import ScheduleOptions


def noise_options(cfg) -> NoiseOptions:
    return NoiseOptions(
        noise_offset=float(cfg.noise_offset or 0.0),
        noise_offset_random_strength=bool(cfg.noise_offset_random_strength),
        adaptive_noise_scale=float(cfg.adaptive_noise_scale or 0.0),
        multires_noise_iterations=int(cfg.multires_noise_iterations or 0),
        multires_noise_discount=float(cfg.multires_noise_discount if cfg.multires_noise_discount is not None else 0.3),
        ip_noise_gamma=float(cfg.ip_noise_gamma or 0.0),
        ip_noise_gamma_random_strength=bool(cfg.ip_noise_gamma_random_strength),
        min_timestep=int(cfg.min_timestep or 0),
        max_timestep=int(cfg.max_timestep if cfg.max_timestep is not None else NUM_TRAIN_TIMESTEPS),
        zero_terminal_snr=bool(getattr(cfg, "zero_terminal_snr", False)),
        v_parameterization=bool(cfg.v_parameterization),
    )


def loss_options(cfg) -> LossOptions:
    return LossOptions(
        loss_type=cfg.loss_type or "l2",
        huber_schedule=cfg.huber_schedule or "snr",
        huber_c=float(cfg.huber_c),
        huber_scale=float(cfg.huber_scale),
        min_snr_gamma=float(cfg.min_snr_gamma or 0.0),
        scale_v_pred_loss_like_noise_pred=bool(cfg.scale_v_pred_loss_like_noise_pred),
        v_pred_like_loss=float(getattr(cfg, "v_pred_like_loss", 0.0) or 0.0),
        debiased_estimation_loss=bool(cfg.debiased_estimation_loss),
        v_parameterization=bool(cfg.v_parameterization),
    )


def schedule_options(cfg) -> ScheduleOptions:
    return ScheduleOptions(
        lr_scheduler=cfg.lr_scheduler or "constant",
        lr_warmup_steps=cfg.lr_warmup_steps or 0,
        lr_decay_steps=cfg.lr_decay_steps or 0,
        lr_scheduler_num_cycles=int(cfg.lr_scheduler_num_cycles or 1),
        lr_scheduler_power=float(cfg.lr_scheduler_power if cfg.lr_scheduler_power is not None else 1.0),
        lr_scheduler_min_lr_ratio=cfg.lr_scheduler_min_lr_ratio,
        lr_scheduler_timescale=cfg.lr_scheduler_timescale,
    )


def save_cadence(cfg) -> SaveCadence:
    return SaveCadence(
        save_every_n_epochs=cfg.save_every_n_epochs,
        save_every_n_steps=cfg.save_every_n_steps,
        save_last_n_epochs=cfg.save_last_n_epochs,
        save_last_n_steps=cfg.save_last_n_steps,
        save_last_n_epochs_state=cfg.save_last_n_epochs_state,
        save_last_n_steps_state=cfg.save_last_n_steps_state,
    )
