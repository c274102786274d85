"""`lorapipe generate "PROMPT <lora:NAME:0.8>" --base-model PATH --lora-dir DIR -o OUT.png`.

Only argparse lives here; torch and diffusers load inside the handler.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images from a prompt with A1111 syntax (<lora:name:w>, (word:1.2), BREAK)",
        description="Generate images with an SDXL base model and LoRAs from a folder. PNGs carry A1111's infotext "
        "in their `parameters` chunk. With --batch-size/--n-iter above 1, OUT.png becomes OUT-00.png, ...",
    )
    parser.add_argument("prompt", help="prompt; LoRAs as <lora:NAME:WEIGHT> (NAME = file stem or ss_output_name)")
    parser.add_argument(
        "--base-model",
        required=True,
        metavar="PATH",
        help="diffusers SDXL folder, single-file .safetensors checkpoint, or hub id",
    )
    parser.add_argument(
        "--lora-dir",
        metavar="DIR",
        help="folder of .safetensors LoRAs the tags refer to; default: "
        "the folder `lorapipe pipeline run` publishes to ($LORAPIPE_HOME/loras)",
    )
    parser.add_argument("-o", "--output", default="out.png", metavar="OUT.png", help="where to write the PNG")
    parser.add_argument("--negative", default="", metavar="TEXT", help="negative prompt")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=-1, help="-1 picks a random seed (printed)")
    parser.add_argument("--width", type=int, help="default 1024, or the --init-image's width")
    parser.add_argument("--height", type=int, help="default 1024, or the --init-image's height")
    parser.add_argument("--sampler", default="DPM++ 2M", help="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M'")
    parser.add_argument("--scheduler", default="automatic", help="A1111 schedule type: automatic, karras, ...")
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--n-iter", type=int, default=1, help="number of batches")
    hires = parser.add_argument_group(
        "hires fix",
        "A1111's hires fix: sample at --width x --height, upscale, then denoise again at the larger "
        "size. On with --enable-hr or any --hr-scale/--hr-resize-x/--hr-resize-y.",
    )
    hires.add_argument("--enable-hr", action="store_true", help="turn hires fix on (scale 2 unless told)")
    hires.add_argument("--hr-scale", type=float, help="upscale factor (default 2) when no --hr-resize-x/-y")
    hires.add_argument("--hr-resize-x", type=int, default=0, metavar="W", help="target width (0: keep aspect)")
    hires.add_argument("--hr-resize-y", type=int, default=0, metavar="H", help="target height (0: keep aspect)")
    hires.add_argument(
        "--hr-upscaler",
        help="'Latent' (default), 'Latent (nearest-exact)', 'Latent (bicubic)', "
        "'Latent (antialiased)', 'Latent (bicubic antialiased)', 'Latent (nearest)', 'Lanczos', "
        "'Nearest' or 'None'",
    )
    hires.add_argument("--hr-second-pass-steps", type=int, default=0, metavar="N", help="0: same as --steps")
    hires.add_argument("--hr-sampler", help="second-pass sampler (default: --sampler)")
    hires.add_argument("--hr-prompt", default="", help="second-pass prompt (default: the prompt)")
    hires.add_argument("--hr-negative", default="", help="second-pass negative prompt (default: --negative)")
    parser.add_argument(
        "--denoising-strength",
        type=float,
        metavar="S",
        help="how much is repainted, (0, 1]: img2img/inpainting (default 0.75) or the hires pass (default 0.7)",
    )
    img2img = parser.add_argument_group(
        "img2img and inpainting",
        "Start from --init-image instead of noise; with --mask (white = repaint, black = "
        "keep, or the alpha of a transparent mask) only the masked part changes, as A1111's inpaint tab.",
    )
    img2img.add_argument("--init-image", metavar="IMAGE", help="the picture to start from (img2img)")
    img2img.add_argument(
        "--resize-mode",
        choices=("resize", "crop", "fill"),
        default="resize",
        help="an --init-image of another size than --width x --height is stretched (resize), "
        "cropped to cover (crop) or fitted inside with the edges filled (fill), as A1111's modes",
    )
    img2img.add_argument("--mask", metavar="IMAGE", help="inpainting mask for --init-image")
    img2img.add_argument("--mask-blur", type=int, default=4, metavar="PX", help="feather the mask edge (default 4)")
    img2img.add_argument("--invert-mask", action="store_true", help="repaint the black part instead")
    img2img.add_argument(
        "--masked-content",
        default="original",
        choices=("fill", "original", "latent noise", "latent nothing"),
        help="what the masked area starts from (A1111's 'Masked content')",
    )
    img2img.add_argument(
        "--only-masked",
        action="store_true",
        help="inpaint a crop around the mask at --width x --height and paste it back "
        "(A1111's 'Inpaint area: Only masked')",
    )
    img2img.add_argument("--only-masked-padding", type=int, default=32, metavar="PX")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: fp16 on cuda, fp32 on cpu")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from lorapipe.atomic import atomic_write_bytes
    from lorapipe.cli.lora_dir import resolve_lora_dir
    from lorapipe.generate.generator import DEFAULT_DENOISING_STRENGTH, GenerationRequest, Generator
    from lorapipe.generate.hires import HIRES_DENOISING_STRENGTH, HiresFix, check_hires
    from lorapipe.generate.infotext import png_bytes
    from lorapipe.generate.quiet import quiet_model_loading
    from lorapipe.sdxl.libraries import import_sdxl_libraries

    init_images, inpaint, size = _img2img_inputs(args)
    hires = None
    if args.enable_hr or args.hr_scale is not None or args.hr_resize_x or args.hr_resize_y:
        hires = HiresFix(
            scale=2.0 if args.hr_scale is None else args.hr_scale,
            resize_x=args.hr_resize_x,
            resize_y=args.hr_resize_y,
            upscaler=args.hr_upscaler,
            second_pass_steps=args.hr_second_pass_steps,
            denoising_strength=HIRES_DENOISING_STRENGTH if args.denoising_strength is None else args.denoising_strength,
            sampler_name=args.hr_sampler,
            prompt=args.hr_prompt,
            negative_prompt=args.hr_negative,
        )
        check_hires(hires)  # a misspelt upscaler fails before minutes of model loading
    import_sdxl_libraries()
    quiet_model_loading()
    generator = Generator.load(
        args.base_model, lora_dir=resolve_lora_dir(args.lora_dir), device=args.device, dtype=args.dtype
    )
    result = generator.generate(
        GenerationRequest(
            prompt=args.prompt,
            negative_prompt=args.negative,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            width=size[0],
            height=size[1],
            seed=args.seed,
            batch_size=args.batch_size,
            n_iter=args.n_iter,
            sampler_name=args.sampler,
            scheduler=args.scheduler,
            hires=hires,
            init_images=init_images,
            inpaint=inpaint,
            denoising_strength=DEFAULT_DENOISING_STRENGTH
            if args.denoising_strength is None
            else args.denoising_strength,
            resize_mode=("resize", "crop", "fill").index(args.resize_mode),
        )
    )
    for warning in result.warnings:
        print(f"lorapipe: warning: {warning}", file=sys.stderr)
    out = Path(args.output)
    paths = (
        [out]
        if len(result.images) == 1
        else [out.with_name(f"{out.stem}-{i:02d}{out.suffix or '.png'}") for i in range(len(result.images))]
    )
    for path, image, text in zip(paths, result.images, result.infotexts):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, png_bytes(image, text))
        print(f"{path}  seed {text.rsplit('Seed: ', 1)[-1].split(',')[0]}")
    return 0


def _img2img_inputs(args: argparse.Namespace):
    """(init images, InpaintOptions or None, (width, height)) from the img2img flags; errors name the flag."""
    from lorapipe.errors import GenerationError
    from lorapipe.generate.inpaint import InpaintOptions, check_inpaint

    if args.mask and not args.init_image:
        raise GenerationError("--mask: inpainting needs --init-image (the picture to repaint)")
    if not args.init_image:
        return (), None, (args.width or 1024, args.height or 1024)
    if args.enable_hr or args.hr_scale is not None or args.hr_resize_x or args.hr_resize_y:
        raise GenerationError("--enable-hr: hires fix is for txt2img; drop it, or drop --init-image")
    init = _open_image("--init-image", args.init_image)
    # The init image's own size by default (as a person expects), on the multiple of 8 SDXL needs.
    size = (args.width or init.width // 8 * 8, args.height or init.height // 8 * 8)
    inpaint = None
    if args.mask:
        inpaint = InpaintOptions(
            mask=_open_image("--mask", args.mask, keep_alpha=True),
            blur_x=args.mask_blur,
            blur_y=args.mask_blur,
            masked_content=args.masked_content,
            invert=args.invert_mask,
            only_masked=args.only_masked,
            only_masked_padding=args.only_masked_padding,
        )
        check_inpaint(inpaint)
    return (init,), inpaint, size


def _open_image(flag: str, path: str, *, keep_alpha: bool = False):
    from PIL import Image, UnidentifiedImageError

    from lorapipe.errors import GenerationError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy() if keep_alpha else image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise GenerationError(f"{flag} {path}: not a readable image ({exc})") from None
