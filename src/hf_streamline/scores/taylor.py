"""First-order Taylor importance: sum over a layer's weights of |dL/dW * W| with the LM loss on calibration data.

The gradient is that of the mean LM loss over all calibration batches (accumulated), as in LLM-Pruner / Shortened
LLaMA; only decoder-layer parameters get gradients.
"""

from __future__ import annotations

import torch

from ..architecture import get_decoder_layers
from ..errors import StreamlineError
from ..log import progress_bar
from ..utils import model_device
from .base import ScoreContext, ScoreResult, Scorer, register_scorer


@register_scorer
class Taylor(Scorer):
    name = "taylor"
    citation = ("kim2024shortened", "Taylor+ importance")
    description = "sum |dL/dW * W| over the layer's weights, LM loss on calibration; low = removed first"

    def score(self, ctx: ScoreContext) -> ScoreResult:
        from ..offload import refuse_offloaded

        model = ctx.model
        refuse_offloaded(model, "the metric 'taylor' (gradients of every layer's weights)",
                         "load the model whole (without sequential), or use a hooked metric such as block_influence")
        if getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None):
            raise StreamlineError("on a quantized model (4-bit / 8-bit) the weights have no gradients; load the model "
                                  "in full precision for this metric", argument="metric", value=self.name)
        layers = get_decoder_layers(model)
        layer_params = {id(p) for p in layers.parameters()}
        saved = {n: p.requires_grad for n, p in model.named_parameters()}
        was_training = model.training
        device = model_device(model)
        n_batches = (len(ctx.calibration) + ctx.batch_size - 1) // ctx.batch_size
        try:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(id(p) in layer_params)
                p.grad = None
            for batch in progress_bar(ctx.calibration.batches(ctx.batch_size), total=n_batches, desc="taylor",
                              disable=not ctx.progress, leave=False):
                ids = batch["input_ids"].to(device)
                mask = batch["attention_mask"].to(device)
                labels = ids.masked_fill(mask == 0, -100)
                out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
                (out.loss / n_batches).backward()
            values = []
            with torch.no_grad():
                for layer in layers:
                    values.append(float(sum((p.grad.float() * p.float()).abs().sum()
                                            for p in layer.parameters() if p.grad is not None)))
        finally:
            for n, p in model.named_parameters():
                p.grad = None
                p.requires_grad_(saved[n])
            model.train(was_training)
        return ScoreResult(self.name, per_layer=values)
