"""``top_weights``: the top layer's matmul weights (and biases) with the bottom layer's norms.

This is what the released SLM/LaCo code actually computes: it updates the bottom layer in place,
``w_bottom += w_k − w_bottom`` for k = bottom..top, so after the loop ``w_bottom == w_top`` for every matmul it
touches, while the norms (never touched) stay the bottom layer's.  Named for what it is.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import NORM_KIND, MergeRule, register_merge_rule


@register_merge_rule
class TopWeights(MergeRule):
    name = "top_weights"
    citation = ("yang2024laco", "merge rule as in the LaCo authors' released code")
    description = "top layer's matmul weights/biases + bottom layer's norms (what the authors' released code computes)"

    def combine(self, tensors: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
        return (tensors[0] if kind == NORM_KIND else tensors[-1]).clone()
