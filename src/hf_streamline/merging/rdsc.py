"""``rdsc``: θ_l + Σ_k (θ_k − θ_l) -- the rule the LaCo and SLM papers write (Reserving-Differences-while-Seeking-Common).

Applied literally to every parameter of the layer, norms included (the formula does not single them out).  Over a
window of n layers it adds n−1 parameter differences; the weights drift far from any trained layer, which is why the
literal rule is reported (and measured here, see docs/merging.md) to collapse output similarity over long windows.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import MergeRule, _f32, register_merge_rule


@register_merge_rule
class RDSC(MergeRule):
    name = "rdsc"
    citation = ("yang2024laco", "merge rule that adds parameter differences (Reserving-Differences-while-Seeking-Common)")
    description = "θ_bottom + Σ_k (θ_k − θ_bottom) over the window, every parameter (the papers' formula)"

    def combine(self, tensors: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
        base = _f32(tensors[0])
        out = base.clone()
        for t in tensors[1:]:
            out += _f32(t) - base
        return out
