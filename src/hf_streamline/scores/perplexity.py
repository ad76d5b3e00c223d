"""Leave-one-layer-out perplexity on the calibration data: how much worse the model gets without each layer."""

from __future__ import annotations

import math

import torch

from ..architecture import num_layers, skip_layers
from ..log import progress_bar
from ..utils import model_device
from .base import ScoreContext, ScoreResult, Scorer, register_scorer


@torch.no_grad()
def calibration_perplexity(model, calibration, batch_size: int = 8) -> float:
    device = model_device(model)
    nll, count = 0.0, 0
    for batch in calibration.batches(batch_size):
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        nll += float(loss)
        count += int((labels != -100).sum())
    return math.exp(nll / max(count, 1))


@register_scorer
class LeaveOneOutPerplexity(Scorer):
    name = "perplexity"
    citation = ("kim2024shortened", "perplexity-based layer importance")
    description = "calibration perplexity with the layer skipped; low = removed first"

    def score(self, ctx: ScoreContext) -> ScoreResult:
        values = []
        for i in progress_bar(range(num_layers(ctx.model)), desc="leave-one-out ppl", disable=not ctx.progress, leave=False):
            with skip_layers(ctx.model, [i]):
                values.append(calibration_perplexity(ctx.model, ctx.calibration, ctx.batch_size))
        base = calibration_perplexity(ctx.model, ctx.calibration, ctx.batch_size)
        return ScoreResult(self.name, per_layer=values, details={"dense_perplexity": base})
