"""A1111 request bodies as pydantic models (the HTTP edge only): A1111's field names and API defaults,
unknown keys ignored, and bounds that answer 422 before anything reaches the GPU worker."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorapipe.errors import GenerationError
from lorapipe.generate.generator import DEFAULT_DENOISING_STRENGTH
from lorapipe.generate.hires import HIRES_DENOISING_STRENGTH, HiresFix, check_hires, hires_target
from lorapipe.generate.inpaint import MASKED_CONTENT, InpaintOptions
from lorapipe.server.settings import Limits


class Txt2ImgBody(BaseModel):
    """`/sdapi/v1/txt2img` (A1111 StableDiffusionProcessingTxt2Img + API fields, v1.10 defaults)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int = Field(50, ge=1)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    width: int = Field(512, ge=64)
    height: int = Field(512, ge=64)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = DEFAULT_DENOISING_STRENGTH
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = Field(None, max_length=128)
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    def hires_fix(self) -> HiresFix | None:
        """The hires fix this body asks for (None without `enable_hr`); empty strings mean "same as first pass"."""
        if not self.enable_hr:
            return None
        return HiresFix(
            scale=self.hr_scale,
            resize_x=self.hr_resize_x,
            resize_y=self.hr_resize_y,
            upscaler=self.hr_upscaler or None,
            second_pass_steps=self.hr_second_pass_steps,
            denoising_strength=HIRES_DENOISING_STRENGTH if self.denoising_strength is None else self.denoising_strength,
            sampler_name=self.hr_sampler_name or None,
            scheduler=self.hr_scheduler or None,
            prompt=self.hr_prompt,
            negative_prompt=self.hr_negative_prompt,
        )

    def check_limits(self, limits: Limits) -> list[dict]:
        """Errors in FastAPI's 422 `detail` shape for values beyond this server's limits (on the final size)."""
        problems = []
        bounds = {
            "steps": limits.max_steps,
            "width": limits.max_side,
            "height": limits.max_side,
            "batch_size": limits.max_batch_size,
            "n_iter": limits.max_n_iter,
            "hr_second_pass_steps": limits.max_steps,
        }
        for name, bound in bounds.items():
            if getattr(self, name) > bound:
                problems.append(_error(name, f"Input should be less than or equal to {bound}", "less_than_equal"))
        if self.width * self.height > limits.max_pixels:
            problems.append(
                _error("width", f"width*height must be at most {limits.max_pixels} pixels", "too_many_pixels")
            )
        hires = self.hires_fix()
        if hires is not None:
            try:
                check_hires(hires)
                target = hires_target(self.width, self.height, hires)
            except GenerationError as exc:  # the message starts with the field name
                field = str(exc).split(":", 1)[0].split("/", 1)[0]
                return [*problems, _error(field, str(exc), "value_error")]
            sizing = "hr_scale" if hires.resize_x == hires.resize_y == 0 else "hr_resize_x"
            if target and max(target.width, target.height) > limits.max_side:
                problems.append(
                    _error(
                        sizing,
                        f"the hires size {target.width}x{target.height} exceeds "
                        f"{limits.max_side} pixels a side; lower {sizing}",
                        "less_than_equal",
                    )
                )
            elif target and target.width * target.height > limits.max_pixels:
                problems.append(
                    _error(
                        sizing,
                        f"the hires size {target.width}x{target.height} exceeds "
                        f"{limits.max_pixels} pixels; lower {sizing}",
                        "too_many_pixels",
                    )
                )
        return problems


class Img2ImgBody(Txt2ImgBody):
    """`/sdapi/v1/img2img`: txt2img fields plus the init image group."""

    init_images: list[str] | None = None
    # 0 just resize, 1 crop and resize, 2 resize and fill; 3 (latent upscale) is not offered
    resize_mode: int = Field(0, ge=0, le=2)
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = Field(4, ge=0)
    mask_blur_y: int = Field(4, ge=0)
    mask_blur: int | None = Field(None, ge=0)
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3)  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False
    denoising_strength: float | None = Field(DEFAULT_DENOISING_STRENGTH, gt=0.0, le=1.0)

    def hires_fix(self) -> HiresFix | None:
        return None  # A1111's img2img has no hires fix; its enable_hr field is inherited, not used

    def inpaint_options(self, mask) -> InpaintOptions:
        """The mask group as the Generator takes it (`mask` already decoded); `mask_blur` sets both directions."""
        blur_x = self.mask_blur if self.mask_blur is not None else self.mask_blur_x
        blur_y = self.mask_blur if self.mask_blur is not None else self.mask_blur_y
        return InpaintOptions(
            mask=mask,
            blur_x=blur_x,
            blur_y=blur_y,
            mask_round=self.mask_round,
            masked_content=MASKED_CONTENT[self.inpainting_fill],
            invert=bool(self.inpainting_mask_invert),
            only_masked=self.inpaint_full_res,
            only_masked_padding=self.inpaint_full_res_padding,
        )


class PngInfoBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = ""


def _error(field: str, msg: str, kind: str) -> dict:
    return {"loc": ["body", field], "msg": msg, "type": kind}
