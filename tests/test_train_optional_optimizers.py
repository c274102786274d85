"""Kohya's optional optimizers (Lion, Prodigy, DAdaptation) build from their packages and actually step."""

import pytest
import torch

from lorapipe.train.optimizers import build_optimizer


def _quadratic_steps(optimizer, param, steps=5):
    """Minimise |param - 1|^2 for a few steps; return the loss before and after."""
    losses = []
    for _ in range(steps):
        loss = ((param - 1.0) ** 2).sum()
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses[0], float(((param.detach() - 1.0) ** 2).sum())


@pytest.mark.parametrize(
    "name, package, class_name, args",
    [
        ("Lion", "lion_pytorch", "Lion", ["weight_decay=0.01"]),
        ("Prodigy", "prodigyopt", "Prodigy", ["d_coef=2", "safeguard_warmup=True"]),
        ("DAdaptAdam", "dadaptation", "DAdaptAdam", []),
        ("DAdaptation", "dadaptation", "DAdaptAdam", []),
        ("DAdaptLion", "dadaptation", "DAdaptLion", []),
    ],
)
def test_optional_optimizer_builds_from_its_package_and_learns(name, package, class_name, args):
    pytest.importorskip(package)
    param = torch.nn.Parameter(torch.zeros(8))
    lr = 1.0 if name.startswith(("Prodigy", "DAdapt")) else 0.05  # adaptive ones expect lr=1 as in sd-scripts docs
    optimizer, choice = build_optimizer(name, args, [{"params": [param], "lr": lr}], lr)
    assert type(optimizer).__name__ == class_name and type(optimizer).__module__.startswith(package)
    assert class_name in choice.metadata_string()
    before, after = _quadratic_steps(optimizer, param)
    assert after < before
