"""Which checkpoint to use: the best subject fidelity that does not cost prompt fidelity or leak.

The rule (also in the README and in every report): among the LoRA checkpoints whose CLIP-T is at most
`clip_t_margin` below the best CLIP-T of any checkpoint and whose leakage is at most `leakage_margin` above the lowest
leakage, pick the one with the highest DINO-I (ties: the earlier one, which is less overfit). When no checkpoint meets
both margins, the leakage margin is dropped. Margins are absolute, in the metrics' own cosine units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lorapipe.errors import EvaluationError

CLIP_T_MARGIN = 0.02
LEAKAGE_MARGIN = 0.05


@dataclass(frozen=True)
class Recommendation:
    checkpoint: str
    rule: str
    eligible: tuple[str, ...]
    clip_t_margin: float
    leakage_margin: float


def rule_text(clip_t_margin: float = CLIP_T_MARGIN, leakage_margin: float = LEAKAGE_MARGIN) -> str:
    return (
        f"highest DINO-I among checkpoints whose CLIP-T is within {clip_t_margin:g} of the best CLIP-T and whose "
        f"leakage is within {leakage_margin:g} of the lowest leakage (ties: the earlier checkpoint; when none meets "
        "both margins, only the CLIP-T margin applies)"
    )


def recommend(
    scores: Sequence, *, clip_t_margin: float = CLIP_T_MARGIN, leakage_margin: float = LEAKAGE_MARGIN
) -> Recommendation:
    """`scores`: CheckpointScore of the LoRA checkpoints (not the base) in training order."""
    if not scores:
        raise EvaluationError("checkpoints: nothing to recommend from; evaluate a run with at least one LoRA file")
    best_clip_t = max(s.clip_t for s in scores)
    lowest_leakage = min(s.leakage for s in scores)
    eligible = [
        s for s in scores if s.clip_t >= best_clip_t - clip_t_margin and s.leakage <= lowest_leakage + leakage_margin
    ]
    if not eligible:  # the prompt-faithful ones all leak: keep prompt fidelity, the leakage column shows the cost
        eligible = [s for s in scores if s.clip_t >= best_clip_t - clip_t_margin]
    chosen = max(eligible, key=lambda s: (s.dino_i, -scores.index(s)))
    return Recommendation(
        checkpoint=chosen.checkpoint,
        rule=rule_text(clip_t_margin, leakage_margin),
        eligible=tuple(s.checkpoint for s in eligible),
        clip_t_margin=clip_t_margin,
        leakage_margin=leakage_margin,
    )
