"""Reverse order (Reassessing Layer Pruning, Lu et al., 2024): the last layers go first."""

from __future__ import annotations

from ..architecture import num_layers
from .base import ScoreContext, ScoreResult, Scorer, register_scorer


@register_scorer
class ReverseOrder(Scorer):
    name = "reverse_order"
    citation = ("lu2024reassessing", "reverse-order pruning of the last layers")
    description = "importance = distance from the top: the deepest layers are removed first (Reassessing Layer Pruning)"
    needs_calibration = False

    def score(self, ctx: ScoreContext) -> ScoreResult:
        L = num_layers(ctx.model)
        return ScoreResult(self.name, per_layer=[float(L - 1 - i) for i in range(L)])
