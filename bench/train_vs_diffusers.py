"""`lorapipe train` vs diffusers' own `examples/dreambooth/train_dreambooth_lora_sdxl.py`, run unmodified.

Same tiny SDXL-architecture model (`lorapipe model make-tiny`), same 12 images (`lorapipe dataset make-sample`),
128 px (center crop), batch 1, rank 4, AdamW, lr 1e-4, fp32, UNet only, no latent caching on either side, 20 and
220 steps, repetitions interleaved. Each run is its own process with one torch thread. Printed as min/median/max
over the repetitions:

- s/step steady: median interval between optimizer-step ends from the 4th step on, in the long run;
- s/step by difference: (wall time of the long run - wall time of the short run) / (step difference), which also
  counts any per-step work outside the optimizer step;
- start-up: process launch to the end of the first optimizer step;
- peak RSS of the process (os.wait4 on that child).
The goal check uses each side's best repetition (on a shared machine other work only adds time); the ratios of
the paired repetitions and of the medians are printed too.

Step times come from a `sitecustomize` in a temp folder that registers torch's global optimizer-step hook when
`torch.optim.optimizer` is first imported; neither program's code is changed. The script needs torchvision, which
must never be installed here (it breaks transformers), so the same temp folder holds a small stand-in with just the
transforms the script uses (PIL/numpy/torch), on PYTHONPATH for the script's process only.

Which layers get LoRA: the script wraps only the attention projections (to_q/k/v/out.0). The like-for-like run
("lorapipe") trains the same layers as a Kohya user asks for them: `network_module = "lycoris.kohya"` with
`network_args = ["algo=lora", "preset=attn-only"]` (sd-scripts' networks.lora has no argument that narrows its set);
the goal is checked on it. "lorapipe-kohya" is the default networks.lora run, whose set also holds proj_in/out and
the feed-forward layers, so more work per step; it is printed beside, without a goal. The layer counts are read from
the saved files. Other differences, by design of each program: the script encodes its one instance prompt, lorapipe
the image's caption files; the script logs to TensorBoard (its default; "none" is not accepted), lorapipe does not
unless logging_dir is set.

Then the generate comparison of `generate_vs_diffusers.py` (s/image in process, pixels identical) and one small
image from the CLI vs a plain `StableDiffusionXLPipeline` script (wall time, peak RSS, pixels identical).

Run: python bench/train_vs_diffusers.py --diffusers-script PATH [--steps 20 220] [--repeats 3]
(the script of the installed diffusers' release: examples/dreambooth/train_dreambooth_lora_sdxl.py). Smaller
--steps/--repeats give a quick look. Prints ratios measured in this run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from generate_common import child_env, lorapipe_train_cmd, measure_process

INSTANCE_PROMPT = "a photo of dwjz toy"
RESOLUTION = 128
# lorapipe's runs: the like-for-like one (the script's layers, as LyCORIS's attention-only preset) and Kohya's
# default networks.lora set. The goal is checked on the first.
NETWORKS = {
    "lorapipe": ('network_module="lycoris.kohya"', 'network_args=["algo=lora", "preset=attn-only"]'),
    "lorapipe-kohya": (),
}
PROGRAMS = (*NETWORKS, "diffusers")

# Records time.monotonic() at the end of every optimizer step (torch's global post-step hook), written as JSON
# to $BENCH_STEP_TIMES when the interpreter exits; installed when torch.optim.optimizer is first imported, so
# torch loads when the program imports it, not earlier. With $BENCH_TORCHVISION_DIR it also serves the torchvision
# stand-in from that folder, but only to an `import` in the program's own __main__: transformers and diffusers
# probe for torchvision with find_spec and must keep seeing none (their torchvision code paths need the real one),
# and once __main__ imports something else the stand-in leaves sys.modules again (the script keeps its names).
_SITECUSTOMIZE = """
import atexit, importlib.machinery, json, os, sys, time

_stamps = []
_out = os.environ.get("BENCH_STEP_TIMES")
_torchvision_dir = os.environ.get("BENCH_TORCHVISION_DIR")


def _caller_module():
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
        frame = frame.f_back
    return frame.f_globals.get("__name__") if frame is not None else None


class _BenchFinder:
    served = False

    def find_spec(self, name, path=None, target=None):
        if _torchvision_dir and name == "torchvision":
            if _caller_module() != "__main__":
                return None
            self.served = True
            return importlib.machinery.PathFinder.find_spec(name, [_torchvision_dir])
        if self.served and not name.startswith("torchvision"):
            self.served = False
            for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[module]
        if _out and name == "torch.optim.optimizer":
            return self._hooked(name, path)
        return None

    def _hooked(self, name, path):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            module.register_optimizer_step_post_hook(lambda *args: _stamps.append(time.monotonic()))

        spec.loader.exec_module = exec_module
        return spec


def _write():
    with open(_out, "w") as handle:
        json.dump(_stamps, handle)


sys.meta_path.insert(0, _BenchFinder())
if _out:
    atexit.register(_write)
"""

# The torchvision API the script uses: transforms.{InterpolationMode, Compose, Resize, CenterCrop, RandomCrop
# (+get_params), RandomHorizontalFlip, ToTensor, Normalize} and transforms.functional.crop, with torchvision's
# semantics (Resize(int) scales the shorter side; ToTensor gives CHW floats in [0, 1]).
_TORCHVISION = {
    "__init__.py": "from . import transforms\n__version__ = '0.0+bench-stand-in'\n",
    "transforms/functional.py": """
def crop(img, top, left, height, width):
    return img.crop((left, top, left + width, top + height))


def hflip(img):
    from PIL import Image

    return img.transpose(Image.FLIP_LEFT_RIGHT)
""",
    "transforms/__init__.py": """
import enum

from . import functional
from .functional import crop, hflip


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _pil_filter(mode):
    from PIL import Image

    return {"nearest": Image.NEAREST, "nearest-exact": Image.NEAREST, "bilinear": Image.BILINEAR,
            "bicubic": Image.BICUBIC, "box": Image.BOX, "hamming": Image.HAMMING,
            "lanczos": Image.LANCZOS}[mode.value]


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size, self.interpolation = size, interpolation

    def __call__(self, img):
        w, h = img.size
        if isinstance(self.size, int):
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.size, int(self.size * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            size = (self.size[1], self.size[0])
        return img.resize(size, _pil_filter(self.interpolation))


class CenterCrop:
    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, img):
        th, tw = self.size
        w, h = img.size
        return crop(img, int(round((h - th) / 2.0)), int(round((w - tw) / 2.0)), th, tw)


class RandomCrop:
    def __init__(self, size):
        self.size = _pair(size)

    @staticmethod
    def get_params(img, output_size):
        import torch

        w, h = img.size
        th, tw = output_size
        if h == th and w == tw:
            return 0, 0, h, w
        i = torch.randint(0, h - th + 1, size=(1,)).item()
        j = torch.randint(0, w - tw + 1, size=(1,)).item()
        return i, j, th, tw

    def __call__(self, img):
        return crop(img, *self.get_params(img, self.size))


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img):
        import torch

        return hflip(img) if torch.rand(1).item() < self.p else img


class ToTensor:
    def __call__(self, img):
        import numpy as np
        import torch

        array = np.asarray(img, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255.0)


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, tensor):
        import torch

        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return (tensor - mean) / std
""",
}


@dataclass(frozen=True)
class Run:
    """One training process: wall seconds (launch to exit), optimizer-step end times (seconds after launch),
    peak RSS bytes."""

    wall: float
    steps: list[float]
    peak_rss: int

    @property
    def startup(self) -> float:
        return self.steps[0]

    def steady(self, warmup: int = 3) -> float:
        """Median interval between optimizer-step ends after `warmup` steps (a busy machine's spikes fall out)."""
        return statistics.median(b - a for a, b in itertools.pairwise(self.steps[warmup:]))


def write_helpers(root: Path) -> tuple[Path, Path]:
    """(folder for PYTHONPATH holding the sitecustomize, folder holding the torchvision stand-in package)."""
    hook, standin = root / "hook", root / "standin"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    for name, text in _TORCHVISION.items():
        path = standin / "torchvision" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return hook, standin


def training_env(hook: Path, times_file: Path, torchvision_dir: Path | None = None) -> dict:
    extra = {"BENCH_STEP_TIMES": str(times_file), "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env = child_env(hook.parent / "pycache", hook, **extra)
    env.pop("BENCH_TORCHVISION_DIR", None)
    if torchvision_dir is not None:
        env["BENCH_TORCHVISION_DIR"] = str(torchvision_dir)
    return env


def measure(cmd: list[str], env: dict, log: Path) -> Run:
    """Run one training process to the end and read the step times its sitecustomize wrote."""
    times_file = Path(env["BENCH_STEP_TIMES"])
    times_file.unlink(missing_ok=True)
    start = time.monotonic()
    wall, peak_rss = measure_process(cmd, env, log)
    stamps = json.loads(times_file.read_text())
    return Run(wall=wall, steps=[t - start for t in stamps], peak_rss=peak_rss)


def lorapipe_cmd(dataset: Path, model: Path, out: Path, steps: int, network: tuple[str, ...]) -> list[str]:
    sets = [
        *network,
        "resolution=128",
        "enable_bucket=false",
        "train_batch_size=1",
        "network_dim=4",
        "network_alpha=4",
        "optimizer_type=AdamW",
        "learning_rate=1e-4",
        "unet_lr=1e-4",
        "lr_scheduler=constant",
        "max_grad_norm=1.0",
        "mixed_precision=no",
        "network_train_unet_only=true",
        "cache_latents=false",
        "cache_latents_to_disk=false",
        "cache_text_encoder_outputs=false",
        "noise_offset=0",
        "random_crop=false",
        "flip_aug=false",
        "gradient_checkpointing=false",
        'sample_prompts=""',
        "sample_every_n_steps=0",
        "save_every_n_epochs=0",
        f"max_train_steps={steps}",
        "seed=0",
    ]
    return lorapipe_train_cmd(dataset, model, out, sets)


def script_cmd(script: Path, images: Path, model: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        str(script),
        "--pretrained_model_name_or_path",
        str(model),
        "--instance_data_dir",
        str(images),
        "--instance_prompt",
        INSTANCE_PROMPT,
        "--output_dir",
        str(out),
        "--resolution",
        str(RESOLUTION),
        "--center_crop",
        "--train_batch_size",
        "1",
        "--rank",
        "4",
        "--learning_rate",
        "1e-4",
        "--lr_scheduler",
        "constant",
        "--lr_warmup_steps",
        "0",
        "--max_train_steps",
        str(steps),
        "--mixed_precision",
        "no",
        "--seed",
        "0",
        "--checkpointing_steps",
        "1000000",
    ]


def _stats(values: list[float], fmt: str) -> str:
    return (
        f"min {fmt.format(min(values))}  median {fmt.format(statistics.median(values))}  max {fmt.format(max(values))}"
    )


def _ratios(ours: list[float], theirs: list[float]) -> str:
    pairs = [a / b for a, b in zip(ours, theirs)]
    return f"ratio min {min(pairs):.3f}  median {statistics.median(pairs):.3f}  max {max(pairs):.3f}"


def _layer_count(folder: Path) -> int:
    """How many layers a run trained, read from the file it saved (Kohya's `.lora_down.weight`, diffusers'
    `.lora.down.weight` or peft's `.lora_A.weight`)."""
    from lorapipe.safetensors_header import read_header

    return sum(
        name.endswith((".lora_down.weight", ".lora.down.weight", ".lora_A.weight"))
        for f in folder.glob("*.safetensors")
        for name in read_header(f).tensors
    )


def compare_training(script: Path, root: Path, short: int, long: int, repeats: int) -> None:
    from lorapipe.dataset.sample import write_sample_dataset
    from lorapipe.sdxl.factory import make_pipeline_folder

    model = make_pipeline_folder(root / "tiny", preset="tiny", seed=0)
    dataset = write_sample_dataset(root / "data")
    images = root / "images"  # the script reads every file of its folder as an image: the same PNGs, no captions
    images.mkdir()
    for png in sorted(dataset.rglob("*.png")):
        shutil.copy2(png, images / png.name)
    hook, standin = write_helpers(root / "helpers")
    runs: dict[tuple[str, int], list[Run]] = {}

    def command(name: str, steps: int, out: Path) -> tuple[list[str], dict]:
        if name in NETWORKS:
            return lorapipe_cmd(dataset, model, out, steps, NETWORKS[name]), training_env(hook, root / "times.json")
        return script_cmd(script, images, model, out, steps), training_env(hook, root / "times.json", standin)

    # One unmeasured run each first: it fills the bytecode cache the programs then load from.
    for name in PROGRAMS:
        measure(*command(name, 2, root / f"{name}-warmup"), root / f"{name}-warmup.log")
    print(
        f"training: {len(list(images.iterdir()))} images, {RESOLUTION} px, batch 1, rank 4, AdamW lr 1e-4, fp32, "
        f"UNet only, no caching; {short} and {long} steps, {repeats} interleaved repetitions",
        flush=True,
    )
    for repeat in range(repeats):
        for steps in (short, long):
            for name in PROGRAMS:
                run = measure(
                    *command(name, steps, root / f"{name}-{steps}-{repeat}"), root / f"{name}-{steps}-{repeat}.log"
                )
                if len(run.steps) != steps:
                    raise SystemExit(f"{name}: {len(run.steps)} optimizer steps recorded, expected {steps}")
                runs.setdefault((name, steps), []).append(run)
                print(
                    f"  rep {repeat + 1} {name:14s} {steps:4d} steps: wall {run.wall:6.2f} s, start-up "
                    f"{run.startup:5.2f} s, steady {run.steady() * 1000:6.1f} ms/step, peak RSS "
                    f"{run.peak_rss / 2**20:5.0f} MiB",
                    flush=True,
                )
    table = {}
    for name in PROGRAMS:
        longs, shorts = runs[(name, long)], runs[(name, short)]
        table[name] = {
            "steady": [r.steady() for r in longs],
            "difference": [(a.wall - b.wall) / (long - short) for a, b in zip(longs, shorts)],
            "startup": [r.startup for r in longs + shorts],
            "rss": [max(a.peak_rss, b.peak_rss) / 2**20 for a, b in zip(longs, shorts)],
        }
    rows = (
        ("steady", "s/step, steady (long run)", "{:.4f}", 0.9),
        ("difference", "s/step, by difference of run lengths", "{:.4f}", 0.9),
        ("startup", "start-up to the end of step 1, s", "{:.2f}", 1.0),
        ("rss", "peak RSS, MiB", "{:.0f}", 1.0),
    )
    for key, label, fmt, goal in rows:
        print(f"{label}:")
        for name in PROGRAMS:
            print(f"  {name:14s} {_stats(table[name][key], fmt)}")
        theirs = table["diffusers"][key]
        for name in NETWORKS:
            ours = table[name][key]
            if min(ours + theirs) <= 0:  # a long run finished sooner than a short one: the machine was too busy
                print(f"  {name}: no ratio, a difference is not positive (machine noise); use more steps or repeats")
                continue
            # Another process on the machine only ever adds time, so each side's best run is its least disturbed.
            best = min(ours) / min(theirs)
            median = statistics.median(ours) / statistics.median(theirs)
            verdict = f"goal <= {goal}: {'PASS' if best <= goal else 'FAIL'}" if name == "lorapipe" else "no goal"
            print(
                f"  {name} / diffusers: {_ratios(ours, theirs)}; median/median {median:.3f}; best/best {best:.3f} "
                f"({verdict})"
            )
    counts = {name: _layer_count(root / f"{name}-{long}-0") for name in PROGRAMS}
    print(
        f"layers with LoRA: lorapipe {counts['lorapipe']} (lycoris.kohya algo=lora preset=attn-only: to_q/k/v/out.0), "
        f"lorapipe-kohya {counts['lorapipe-kohya']} (networks.lora: also proj_in/out and feed-forward), "
        f"diffusers script {counts['diffusers']} (to_q/k/v/out.0)"
    )
    log = (root / f"lorapipe-{long}-0.log").read_text(errors="replace")
    cached = "text-encoder outputs cached" in log
    through_peft = "plain LoRA: trained with peft's LoRA layers" in log
    print(f"lorapipe log: text-encoder outputs cached {cached}, LyCORIS LoRA trained through peft {through_peft}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--diffusers-script",
        type=Path,
        help="path of diffusers' examples/dreambooth/train_dreambooth_lora_sdxl.py (not part of this repository)",
    )
    parser.add_argument("--steps", type=int, nargs=2, default=(20, 220), metavar=("SHORT", "LONG"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (logs, outputs)")
    parser.add_argument("--no-generate", action="store_true", help="skip the generate comparison")
    parser.add_argument("--generate-repeats", type=int, default=7)
    args = parser.parse_args()
    short, long = sorted(args.steps)
    if long - short < 5:
        parser.error("--steps: the long run needs at least 5 more steps than the short one")
    root = Path(args.keep or tempfile.mkdtemp(prefix="lorapipe-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.diffusers_script is None:
            print(
                "skip: training vs diffusers' train_dreambooth_lora_sdxl.py: no --diffusers-script PATH given "
                "(get examples/dreambooth/train_dreambooth_lora_sdxl.py of the installed diffusers release)"
            )
        elif not args.diffusers_script.is_file():
            parser.error(f"--diffusers-script: {args.diffusers_script} is not a file")
        else:
            compare_training(args.diffusers_script.resolve(), root / "train", short, long, args.repeats)
        if not args.no_generate:
            from generate_vs_diffusers import compare_cli, compare_in_process

            compare_in_process(repeats=args.generate_repeats)
            compare_cli(root / "generate", repeats=args.repeats)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
