"""Learning figure: held-out denoising loss of the tiny SDXL model without and with the LoRA trained by
`lorapipe train` on the sample dataset (10 images trained, 2 held out; fixed timesteps 200/400/600/800 and noise).

Run: `python bench/train_learning.py [--steps 32] [--base-model DIR]`. Prints both losses and their ratio (lower
with the LoRA = it learned something that carries over to unseen photos of the subject).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def _subset_copy(dataset: Path, dest: Path, keep: slice) -> Path:
    target = dest / "0001-dataset"
    shutil.copytree(dataset, target)
    images = sorted((target / "20_dwjz toy").glob("*.png"))
    for image in set(images) - set(images[keep]):
        image.unlink()
        image.with_suffix(".txt").unlink()
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--base-model", help="SDXL model to train on (default: the tiny random-weight one, built here)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from heldout import compare_with_lora, heldout_samples

    from lorapipe.config import load_train_config
    from lorapipe.dataset.sample import write_sample_dataset
    from lorapipe.dataset.scan import scan_dataset
    from lorapipe.sdxl.factory import make_pipeline_folder
    from lorapipe.train.run import run_training

    with tempfile.TemporaryDirectory(prefix="lorapipe-learn-") as scratch:
        root = Path(scratch)
        model = args.base_model or make_pipeline_folder(root / "tiny", preset="tiny", seed=0)
        dataset = write_sample_dataset(root / "data")
        train = _subset_copy(dataset, root / "train", slice(2, None))
        held = _subset_copy(dataset, root / "held", slice(0, 2))
        result = run_training(
            train,
            base_model=str(model),
            output_dir=root / "out",
            show_progress=False,
            step_lines=False,
            overrides=(f"max_train_steps={args.steps}",),
        )
        cfg = load_train_config(held, base_model=str(model), output_dir=root / "unused").config
        samples = heldout_samples(scan_dataset(cfg.dataset).items, cfg.dataset)
        base, with_lora = compare_with_lora(str(model), result.lora_path, samples)
        trained = f"{len(samples)} unseen images x 4 timesteps, {result.steps_done} steps trained"
        print(f"held-out denoising loss ({trained}):")
        print(f"  base model {base:.6f}   with LoRA {with_lora:.6f}   ratio {with_lora / base:.3f} (< 1 = learned)")


if __name__ == "__main__":
    main()
