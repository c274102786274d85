"""Training state folders (save_state / resume) and pruning of old files.

A state folder mirrors sd-scripts' accelerate layout: `model.safetensors` (the LoRA tensors only, Kohya names,
fp32), `optimizer.bin`, `scheduler.bin`, `random_states_0.pkl`, `scaler.pt` (fp16 only) and `train_state.json`
(`current_epoch`, `current_step`, plus our `updates_done_in_epoch` and `dataset_hash`). It is written into a
temporary sibling and renamed into place, so a folder that exists is always complete.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lorapipe.errors import TrainingError

TRAIN_STATE_FILE = "train_state.json"
MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class TrainState:
    """Where a run stands: optimizer steps done, epoch (1-based, the one in progress) and batches of it consumed."""

    current_step: int
    current_epoch: int
    updates_done_in_epoch: int
    dataset_hash: str
    # sd-scripts writes the epoch that finished; we keep the in-progress epoch and the batch offset.


def save_state(folder: Path, *, network, optimizer, lr_scheduler, scaler, state: TrainState) -> Path:
    """Write a complete state folder atomically (tmp folder + rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(network.kohya_state_dict(torch.float32), str(tmp / MODEL_FILE))
    torch.save(optimizer.state_dict(), tmp / "optimizer.bin")
    torch.save(lr_scheduler.state_dict(), tmp / "scheduler.bin")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    rng = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["torch_cuda"] = torch.cuda.get_rng_state_all()
    with open(tmp / "random_states_0.pkl", "wb") as handle:
        pickle.dump(rng, handle)
    body = {"current_epoch": state.current_epoch, "current_step": state.current_step, **asdict(state)}
    (tmp / TRAIN_STATE_FILE).write_text(json.dumps(body, indent=2), encoding="utf-8")
    for path in tmp.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def read_train_state(folder: Path) -> TrainState:
    """The progress recorded in a state folder; a TrainingError says what is missing."""
    folder = Path(folder)
    path = folder / TRAIN_STATE_FILE
    if not path.is_file():
        raise TrainingError(
            f"resume: {folder} is not a complete state folder (no {TRAIN_STATE_FILE}); "
            "point --resume at a <name>-state folder written with save_state = true"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    return TrainState(
        current_step=int(data["current_step"]),
        current_epoch=int(data["current_epoch"]),
        updates_done_in_epoch=int(data.get("updates_done_in_epoch", 0)),
        dataset_hash=str(data.get("dataset_hash", "")),
    )


def load_state(folder: Path, *, network, optimizer, lr_scheduler, scaler) -> TrainState:
    """Restore LoRA weights, optimizer, scheduler, scaler and RNG from a folder `find_resume_folder` chose (which
    refused a different dataset before any model loaded)."""
    folder = Path(folder)
    state = read_train_state(folder)
    report = network.load_kohya_state_dict(load_file(str(folder / MODEL_FILE)), source=str(folder / MODEL_FILE))
    if report.missing or report.unexpected:
        raise TrainingError(
            f"resume: {folder / MODEL_FILE} does not match this network "
            f"({len(report.missing)} missing, {len(report.unexpected)} unexpected modules); "
            "use the same network_dim/conv_dim and train_unet/text-encoder settings"
        )
    optimizer.load_state_dict(torch.load(folder / "optimizer.bin", weights_only=False))
    lr_scheduler.load_state_dict(torch.load(folder / "scheduler.bin", weights_only=False))
    if scaler is not None and (folder / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=False))
    with open(folder / "random_states_0.pkl", "rb") as handle:
        rng = pickle.load(handle)
    random.setstate(rng["random"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["torch_cuda"])
    return state


def newest_state(folder: Path) -> Path | None:
    """The complete state folder with the highest step under `folder` (or `folder` itself if it is one)."""
    folder = Path(folder)
    if (folder / TRAIN_STATE_FILE).is_file():
        return folder
    if not folder.is_dir():
        return None
    best: tuple[int, float, Path] | None = None
    for child in folder.iterdir():
        if child.name.startswith(".") or not (child / TRAIN_STATE_FILE).is_file():
            continue
        try:
            step = read_train_state(child).current_step
        except (TrainingError, ValueError, KeyError, json.JSONDecodeError):
            continue
        key = (step, child.stat().st_mtime, child)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def find_resume_folder(resume, dataset_hash: str) -> Path:
    """Find the state folder to resume from and refuse a different dataset, before any model loads."""
    folder = newest_state(Path(resume))
    if folder is None:
        raise TrainingError(
            f"resume: {resume} holds no complete state folder (train_state.json); "
            "pass a <name>-state folder written with save_state = true"
        )
    recorded = read_train_state(folder).dataset_hash
    if recorded and recorded != dataset_hash:
        raise TrainingError(
            f"resume: {folder} was trained on a different dataset (images, captions or repeats "
            "changed); resume with the same dataset or start a new run without --resume"
        )
    return folder


def remove_quietly(path: Path) -> None:
    """Delete an old checkpoint file or state folder if it exists."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
