"""``decoder_layer``: one ordinary decoder layer of the base architecture, initialised from the block's first layer.

The result stays a plain checkpoint of the base architecture (the layer is renumbered into its slot on install).
"""

from __future__ import annotations

import copy

from ..architecture import get_decoder_layers
from .base import ReplacementKind, register_kind


@register_kind
class DecoderLayerReplacement(ReplacementKind):
    name = "decoder_layer"
    citation = ("chen2024streamline", "replacing a pruned block by a lightweight trained module")
    description = "one decoder layer of the base architecture, initialised from the block's first layer"
    plain_checkpoint = True
    needs_layer_context = True

    def build(self, model, start, n, options):
        layer = copy.deepcopy(get_decoder_layers(model)[start])
        for p in layer.parameters():
            p.requires_grad_(True)
        return layer
