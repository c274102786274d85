"""Kohya's `scale_weight_norms`: max-norm regularisation of each LoRA module after every optimizer step.

For each module the full update it adds to the base weight, scale x up @ down (scale = alpha / rank), is measured
by its Frobenius norm; a module above the limit has both of its factors shrunk by the square root of
limit / norm, so the update's norm lands on the limit. This is sd-scripts' `apply_max_norm_regularization`
(its clamp of small norms to half the limit keeps a zero update from dividing by zero), and it reports the same
three figures: modules scaled, mean and largest norm after scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorapipe.lora.network import ADAPTER_NAME


@dataclass(frozen=True)
class MaxNormReport:
    keys_scaled: int
    average_key_norm: float
    max_key_norm: float

    def logs(self) -> dict[str, float]:
        """The names sd-scripts logs to TensorBoard."""
        return {
            "max_norm/keys_scaled": float(self.keys_scaled),
            "max_norm/average_key_norm": self.average_key_norm,
            "max_norm/max_key_norm": self.max_key_norm,
        }


def module_update(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """scale x up @ down in the shape of the base weight (linear, 1x1 conv, or 3x3 conv LoRA)."""
    if down.dim() == 4 and down.shape[2:] == (1, 1) and up.shape[2:] == (1, 1):
        update = (up.flatten(1) @ down.flatten(1))[:, :, None, None]
    elif down.dim() == 4:  # a kxk down followed by a 1x1 up (Kohya's conv LoRA): compose them as convolutions
        update = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    else:
        update = up @ down
    return update * scale


@torch.no_grad()
def apply_max_norm(network, max_norm: float) -> MaxNormReport:
    """Shrink every LoRA module whose update norm exceeds `max_norm`; returns what sd-scripts reports."""
    from lorapipe.lora.lycoris_network import LycorisKohyaNetwork

    if isinstance(network, LycorisKohyaNetwork):  # LyCORIS modules know their own update (LoHa, LoKr, ...)
        return MaxNormReport(*network.apply_max_norm(max_norm))
    scaled, norms = 0, []
    for target in network.targets:
        layer = network.lora_layer(target)
        down, up = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
        scale = network.alphas[target.kohya_name] / down.shape[0]
        raw = module_update(down.float(), up.float(), scale).norm()
        norm = raw.clamp(min=max_norm / 2)
        ratio = float(torch.clamp(norm, max=max_norm) / norm)
        if ratio != 1:
            scaled += 1
            down.mul_(ratio**0.5)
            up.mul_(ratio**0.5)
        norms.append(float(raw) * ratio)
    if not norms:
        return MaxNormReport(0, 0.0, 0.0)
    return MaxNormReport(scaled, sum(norms) / len(norms), max(norms))
