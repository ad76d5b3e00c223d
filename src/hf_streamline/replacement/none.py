"""``none``: plain removal of the block (the paper's "Ours (None)")."""

from __future__ import annotations

from .base import ReplacementKind, register_kind


@register_kind
class NoReplacement(ReplacementKind):
    name = "none"
    citation = None  # plain removal of the block
    description = "remove the block, put nothing in its place"
    plain_checkpoint = True
    trainable = False

    def build(self, model, start, n, options):
        return None
