"""Weight magnitude: the l1 or l2 norm of all of a layer's weights (a data-free baseline)."""

from __future__ import annotations

import torch

from ..architecture import get_decoder_layers
from ..errors import StreamlineError
from ..offload import onloaded
from .base import ScoreContext, ScoreResult, Scorer, register_scorer


@register_scorer
class Magnitude(Scorer):
    name = "magnitude"
    citation = None  # a baseline
    description = "l1 (default) or l2 norm of the layer's weights; low = removed first"
    needs_calibration = False

    def score(self, ctx: ScoreContext) -> ScoreResult:
        norm = str(ctx.options.get("norm", "l1"))
        if norm not in ("l1", "l2"):
            raise StreamlineError(f"magnitude norm {norm!r} is unknown; use l1 or l2")
        if getattr(ctx.model, "is_quantized", False) or getattr(ctx.model, "quantization_method", None):
            raise StreamlineError("on a quantized model (4-bit / 8-bit) it would sum packed integers; load the model "
                                  "in full precision for this metric", argument="metric", value=self.name)
        values = []
        with torch.no_grad():
            for layer in get_decoder_layers(ctx.model):
                with onloaded(layer):  # --sequential: one layer's weights in memory at a time
                    if norm == "l1":
                        values.append(float(sum(p.detach().float().abs().sum() for p in layer.parameters())))
                    else:
                        values.append(float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in layer.parameters()))))
        return ScoreResult(self.name, per_layer=values, details={"norm": norm})
