"""Several training processes (one per GPU) as sd-scripts runs under `accelerate launch --multi_gpu`.

Each process trains on its own share of every epoch's batches; after each optimizer-step group the LoRA
gradients are averaged across processes, so every process takes the same optimizer step and holds the same
weights. Only the main process writes files, samples images and prints progress.

Why not `accelerator.prepare(model)` (DDP): the LoRA lives in three modules (UNet and both text encoders), DDP
wraps one, and with dropout or cached text-encoder outputs some LoRA parameters get no gradient in a step, which
DDP only tolerates with `find_unused_parameters` (an extra graph walk every step). One flattened all-reduce per
optimizer step through accelerate's `reduce` keeps the step logic the same for one process or many; the LoRA's
gradients are 114M values (435 MiB in fp32) at network_dim 32 on full SDXL. Unlike DDP the transfer does not
overlap with the backward pass; its cost on GPUs is not measured yet (bench/train_processes.py, CPU only so far).

Launchers: `lorapipe train --processes N` (which re-runs itself under `torch.distributed.run`),
`accelerate launch --multi_gpu --num_processes N -m lorapipe train ...` and `torchrun` all set RANK / WORLD_SIZE,
which is all this needs.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

# torch is imported inside the functions that use it: plan.py reads `Processes` before any model loads.


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world > 1


def processes_from_env(environ=os.environ) -> Processes:
    """Read the launcher's RANK / WORLD_SIZE (torchrun, `accelerate launch`); absent means one process."""
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
    except ValueError:
        return Processes()
    if world < 1 or not 0 <= rank < world:
        return Processes()
    return Processes(rank=rank, world=world)


def torchrun_command(processes: int, module: str, *args: str) -> list[str]:
    """`python -m torch.distributed.run` starting `processes` copies of `python -m MODULE ARGS...` on this host
    (standalone rendezvous; the launcher sets RANK / WORLD_SIZE in each and passes a SIGTERM on to all of them)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*launcher, "-m", module, *args]


def shard_batches(batches: list, processes: Processes) -> list:
    """This process's share of an epoch's batches: every world-th one, starting at its rank.

    As accelerate's `even_batches`, a shorter share is topped up from the start of the epoch so every process
    runs the same number of steps (a process that stopped early would leave the others waiting forever)."""
    if not processes.is_distributed or not batches:
        return list(batches)
    per_process = -(-len(batches) // processes.world)
    padded = list(batches) + list(batches[: per_process * processes.world - len(batches)])
    return padded[processes.rank :: processes.world]


@dataclass(frozen=True)
class StepAgreement:
    """What all processes agreed on after one optimizer-step group."""

    loss: float  # mean over processes
    failed_elsewhere: bool  # another process saw a non-finite loss
    stop: bool  # some process was asked to stop (SIGTERM)


def average_gradients(accelerator, params, *, loss: float, failed: bool, stop: bool) -> StepAgreement:
    """All-reduce the LoRA gradients (mean) plus three flags in one collective call."""
    import torch

    # Every process sends a vector of the same length: a parameter without a gradient here (LoRA dropout, a
    # frozen branch) sends zeros, and a per-parameter count says whether any process had one, so a parameter no
    # process touched keeps grad None and the optimizer skips it exactly as in a one-process run.
    device = accelerator.device
    has_grad = [float(p.grad is not None) for p in params]
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float() for p in params]
        + [torch.tensor(has_grad + [loss, float(failed), float(stop)], device=device)]
    )
    world = accelerator.num_processes
    total = accelerator.reduce(flat, reduction="sum")
    offset = 0
    sums = []
    for p in params:
        sums.append(total[offset : offset + p.numel()])
        offset += p.numel()
    counts = total[offset : offset + len(params)].tolist()
    offset += len(params)
    for p, summed, count in zip(params, sums, counts):
        if count == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_((summed / world).view_as(p))
    loss_sum, failed_count, stop_count = total[offset:].tolist()
    return StepAgreement(loss=loss_sum / world, failed_elsewhere=failed_count > float(failed), stop=stop_count > 0)


def launch_seed(environ=os.environ) -> int:
    """A seed every process of one launch derives alike (for a config without `seed`): from the launcher's run
    id, or its rendezvous address, which are the same in all processes and new for each launch."""
    key = environ.get("TORCHELASTIC_RUN_ID") or f"{environ.get('MASTER_ADDR')}:{environ.get('MASTER_PORT')}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % (2**31 - 1)


def share_main_weights(params) -> None:
    """Copy the main process's LoRA weights into every process, so all start from the same point whatever each
    device's random initialisation did."""
    import torch.distributed as dist

    for p in params:
        dist.broadcast(p.data, src=0)


def wait_for_everyone(accelerator) -> None:
    accelerator.wait_for_everyone()
