"""``drop``: keep the bottom layer as it is; the layers above it in the window are simply removed."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import MergeRule, register_merge_rule


@register_merge_rule
class Drop(MergeRule):
    name = "drop"
    citation = None  # keeps the window's bottom layer: plain removal
    description = "keep the bottom layer only (plain removal of the rest of the window)"

    def combine(self, tensors: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
        return tensors[0].clone()
