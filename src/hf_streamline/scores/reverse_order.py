"""Reverse order (Reassessing Layer Pruning, Lu et al., 2024): the last layers go first."""

from __future__ import annotations

from ..architecture import num_layers
from .base import ScoreContext, ScoreResult, Scorer, register_scorer


@register_scorer
class ReverseOrder(Scorer):
    name = "reverse_order"
    description = "importance = layer index: the deepest layers are removed first (Reassessing Layer Pruning)"
    needs_calibration = False

    def score(self, ctx: ScoreContext) -> ScoreResult:
        return ScoreResult(self.name, per_layer=[float(i) for i in range(num_layers(ctx.model))])
