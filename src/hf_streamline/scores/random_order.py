"""Random importance (seeded): the floor every method must beat."""

from __future__ import annotations

import torch

from ..architecture import num_layers
from .base import ScoreContext, ScoreResult, Scorer, register_scorer


@register_scorer
class RandomScore(Scorer):
    name = "random"
    citation = None  # a baseline
    description = "seeded random importance (baseline)"
    needs_calibration = False

    def score(self, ctx: ScoreContext) -> ScoreResult:
        g = torch.Generator().manual_seed(int(ctx.seed))
        return ScoreResult(self.name, per_layer=torch.rand(num_layers(ctx.model), generator=g).tolist(),
                           details={"seed": int(ctx.seed)})
