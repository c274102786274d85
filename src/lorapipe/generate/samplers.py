"""A1111 sampler and schedule names mapped to diffusers schedulers (torch-free tables + one factory).

Mappings follow diffusers' own A1111 table (docs: api/schedulers/overview) and A1111 >= 1.9's sampler/scheduler
split: `sampler_name` picks the solver, `scheduler` the sigma schedule, "Automatic" the sampler's own default
schedule. Legacy combined names ("DPM++ 2M Karras") are split as A1111 does. Pixel parity with A1111 is not
expected (k-diffusion builds its sigmas differently); the names, defaults and infotext are what clients rely on.
Samplers with no honest diffusers counterpart (DPM++ 2S a, DPM fast, DPM adaptive, Restart, DDIM CFG++) are left
out and answer "Sampler not found", as A1111 does for any unknown name.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from lorapipe.errors import GenerationError

API_DEFAULT_SAMPLER = "Euler"  # A1111's sampler_index default, used when sampler_name is empty


class SamplerNotFound(GenerationError):
    """A sampler or schedule name A1111 does not know (the API answers 404, as A1111 does)."""


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    aliases: tuple[str, ...]
    diffusers_class: str
    config: Mapping[str, object] = field(default_factory=dict)
    default_schedule: str | None = None  # the schedule "Automatic" means for this sampler (A1111 options.scheduler)


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    label: str
    aliases: tuple[str, ...]
    config: Mapping[str, object]


@dataclass(frozen=True)
class ResolvedSampler:
    """What a request's sampler_name/scheduler came to: the infotext names and the diffusers recipe."""

    sampler: SamplerSpec
    schedule: ScheduleSpec  # the requested one; may be "automatic"
    effective_schedule: ScheduleSpec  # after resolving "automatic"

    @property
    def schedule_label(self) -> str:
        """`Schedule type` as A1111 writes it: the resolved label unless it stays Automatic."""
        return self.effective_schedule.label


_M = MappingProxyType
SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepScheduler", _M({}), "karras"),
    SamplerSpec("DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSinglestepScheduler", _M({}), "karras"),
    SamplerSpec(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        "DPMSolverMultistepScheduler",
        _M({"algorithm_type": "sde-dpmsolver++"}),
        "exponential",
    ),
    SamplerSpec(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        "DPMSolverMultistepScheduler",
        _M({"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
        "exponential",
    ),
    # diffusers' third-order SDE-DPMSolver++ update is k-diffusion's sample_dpmpp_3m_sde (eta 1).
    SamplerSpec(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        "DPMSolverMultistepScheduler",
        _M({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
        "exponential",
    ),
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), "EulerAncestralDiscreteScheduler"),
    SamplerSpec("Euler", ("k_euler",), "EulerDiscreteScheduler"),
    SamplerSpec("LMS", ("k_lms",), "LMSDiscreteScheduler"),  # needs scipy (a lorapipe dependency)
    SamplerSpec("Heun", ("k_heun",), "HeunDiscreteScheduler"),
    SamplerSpec("DPM2", ("k_dpm_2",), "KDPM2DiscreteScheduler", _M({}), "karras"),
    SamplerSpec("DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralDiscreteScheduler", _M({}), "karras"),
    SamplerSpec("DDIM", ("ddim",), "DDIMScheduler"),
    SamplerSpec("PLMS", ("plms",), "PNDMScheduler", _M({"skip_prk_steps": True})),
    SamplerSpec("UniPC", ("unipc",), "UniPCMultistepScheduler"),
    SamplerSpec("LCM", ("k_lcm",), "LCMScheduler"),
)

AUTOMATIC = ScheduleSpec("automatic", "Automatic", (), _M({}))
SCHEDULES: tuple[ScheduleSpec, ...] = (
    AUTOMATIC,
    ScheduleSpec("uniform", "Uniform", (), _M({})),
    ScheduleSpec("karras", "Karras", (), _M({"use_karras_sigmas": True})),
    ScheduleSpec(
        "exponential", "Exponential", (), _M({"use_exponential_sigmas": True, "timestep_spacing": "linspace"})
    ),
    ScheduleSpec("sgm_uniform", "SGM Uniform", ("SGMUniform",), _M({"timestep_spacing": "trailing"})),
    ScheduleSpec("simple", "Simple", (), _M({"timestep_spacing": "trailing"})),
)
_SCHEDULE_BY_KEY = {key.lower(): s for s in SCHEDULES for key in (s.name, s.label, *s.aliases)}
_SAMPLER_BY_KEY = {key.lower(): s for s in SAMPLERS for key in (s.name, *s.aliases)}


def find_schedule(name: str | None) -> ScheduleSpec:
    """A schedule by name, label or alias; anything unknown or empty is Automatic (A1111 behaviour)."""
    return _SCHEDULE_BY_KEY.get((name or "").strip().lower(), AUTOMATIC)


def resolve_sampler(sampler_name: str | None, scheduler: str | None = None) -> ResolvedSampler:
    """Resolve A1111 `sampler_name` (+ optional `scheduler`); GenerationError("Sampler not found") if unknown."""
    name = (sampler_name or "").strip() or API_DEFAULT_SAMPLER
    schedule = find_schedule(scheduler)
    sampler = _SAMPLER_BY_KEY.get(name.lower())
    if sampler is None:
        # Legacy combined names: "DPM++ 2M Karras" -> "DPM++ 2M" + Karras (A1111 get_sampler_and_scheduler).
        for key, candidate in _SCHEDULE_BY_KEY.items():
            if key != "automatic" and name.lower().endswith(" " + key):
                base = _SAMPLER_BY_KEY.get(name[: -len(key) - 1].strip().lower())
                if base is not None:
                    sampler = base
                    if schedule is AUTOMATIC:
                        schedule = candidate
                    break
    if sampler is None:
        raise SamplerNotFound("Sampler not found")
    effective = schedule
    if schedule is AUTOMATIC and sampler.default_schedule:
        effective = _SCHEDULE_BY_KEY[sampler.default_schedule]
    return ResolvedSampler(sampler=sampler, schedule=schedule, effective_schedule=effective)


def build_scheduler(resolved: ResolvedSampler, base_config: Mapping[str, object]):
    """Instantiate the diffusers scheduler for `resolved` from the model's own scheduler config."""
    import diffusers

    cls = getattr(diffusers, resolved.sampler.diffusers_class)
    accepted = set(inspect.signature(cls.__init__).parameters)
    overrides = dict(resolved.sampler.config)
    # A schedule the class cannot express is left out rather than failing the request (as A1111 ignores
    # schedules for timestep samplers like DDIM).
    overrides.update({k: v for k, v in resolved.effective_schedule.config.items() if k in accepted})
    return cls.from_config(dict(base_config), **overrides)


def sampler_listing() -> list[dict]:
    """`/sdapi/v1/samplers` entries."""
    return [
        {
            "name": s.name,
            "aliases": list(s.aliases),
            "options": {"scheduler": s.default_schedule} if s.default_schedule else {},
        }
        for s in SAMPLERS
    ]


def schedule_listing() -> list[dict]:
    """`/sdapi/v1/schedulers` entries."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": list(s.aliases) or None,
            "default_rho": 7.0 if s.name == "karras" else -1,
            "need_inner_model": False,
        }
        for s in SCHEDULES
    ]
