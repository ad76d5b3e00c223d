"""``average``: the element-wise mean of every parameter over the window's layers."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import MergeRule, _f32, register_merge_rule


@register_merge_rule
class Average(MergeRule):
    name = "average"
    citation = None  # plain averaging of the window's weights
    description = "mean of every parameter over the window"

    def combine(self, tensors: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
        out = _f32(tensors[0]).clone()
        for t in tensors[1:]:
            out += _f32(t)
        return out / len(tensors)
