"""LLM-Drop's per-sub-block redundancy (He et al., 2024, arXiv 2406.15786): for the attention and the MLP sub-block of
every layer, the mean over tokens of cos(x, x + f(norm(x))), the cosine between the residual stream before the
sub-block and after it.  High = the sub-block barely changes the stream = removed first.

One hooked pass gives every unit: a pre-hook on each decoder layer reads ``x`` (before the attention), a pre-hook on
the norm before the MLP (``architecture.PRE_MLP_NORM_NAMES``) reads the stream between the sub-blocks, and a hook on
the layer's output reads the stream after the MLP.  Statistics are summed per batch; no activation is kept.
"""

from __future__ import annotations

from typing import Any

import torch

from ..architecture import (check_separable_sublayers, find_pre_mlp_norm, get_decoder_layers, layer_input_hidden,
                            layer_output_hidden)
from ..capture import base_forward_module
from ..log import progress_bar
from ..utils import model_device

METRIC = "drop_cosine"


@torch.no_grad()
def sublayer_cosine(model: Any, calibration: Any, batch_size: int = 8, progress: bool = True) -> dict[str, list[float]]:
    """``{"attention": [..], "mlp": [..], "layer": [..]}``: per layer, the mean cosine between the residual stream
    before and after that unit (``layer``: the whole layer, i.e. 1 - block influence)."""
    check_separable_sublayers(model)
    layers = get_decoder_layers(model)
    L = len(layers)
    sums = {k: torch.zeros(L, dtype=torch.float64) for k in ("attention", "mlp", "layer")}
    state: dict[str, Any] = {"x": {}, "h": {}, "mask": None}
    count = [0]

    def cos_sum(a: torch.Tensor, b: torch.Tensor) -> float:
        c = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
        return float((c * state["mask"]).sum())

    handles = []
    for i, layer in enumerate(layers):
        def pre(module, args, kwargs, _i=i):
            state["x"][_i] = layer_input_hidden(args, kwargs)

        def mid(module, args, kwargs, _i=i):
            h = layer_input_hidden(args, kwargs)
            state["h"][_i] = h
            sums["attention"][_i] += cos_sum(state["x"][_i], h)

        def post(module, args, output, _i=i):
            y = layer_output_hidden(output)
            sums["mlp"][_i] += cos_sum(state["h"].pop(_i), y)
            sums["layer"][_i] += cos_sum(state["x"].pop(_i), y)

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(find_pre_mlp_norm(layer).register_forward_pre_hook(mid, with_kwargs=True))
        handles.append(layer.register_forward_hook(post))
    body, device = base_forward_module(model), model_device(model)
    n_batches = (len(calibration) + batch_size - 1) // batch_size
    try:
        for batch in progress_bar(calibration.batches(batch_size), total=n_batches, desc="scoring sub-blocks",
                          disable=not progress, leave=False):
            mask = batch["attention_mask"].to(device)
            state["mask"] = mask.float()
            count[0] += int(mask.sum())
            body(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: (v / max(count[0], 1)).tolist() for k, v in sums.items()}


__all__ = ["METRIC", "sublayer_cosine"]
