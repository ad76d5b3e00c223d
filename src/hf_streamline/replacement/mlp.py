"""``mlp``: a feed-forward module with pre-norm and residual in place of the block (SwiGLU for gated models).

Saved as a ``StreamlineConfig`` folder (``StreamlineForCausalLM``, with remote code).  The module is initialised from
the block's first layer: its pre-MLP norm and input projections are copied (``init="identity"``: zero output
projection, so training starts from plain removal) or its whole MLP (``init="first_layer"``).  Where the width differs
from the base MLP the first ``width`` units are copied and the rest drawn at random.

Architecture knowledge as data: the tables below name where each family keeps its MLP, its projections and its
pre-MLP norm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..architecture import MLP_MODULE_NAMES, MLP_OUTPUT_PROJECTION_NAMES, get_decoder_layers, text_config
from ..errors import StreamlineError
from ..modeling.modeling_streamline import StreamlineMLP
from .base import ReplacementKind, ReplacementOptions, register_kind

MLP_ATTRIBUTES = MLP_MODULE_NAMES  # the MLP sub-module of a decoder layer (else the layer itself: OPT)
GATE_NAMES = ("gate_proj", "w1")
UP_NAMES = ("up_proj", "w3", "c_fc", "dense_h_to_4h", "fc1")
DOWN_NAMES = MLP_OUTPUT_PROJECTION_NAMES  # the architecture table
FUSED_GATE_UP_NAMES = ("gate_up_proj",)  # Phi-3: [gate; up] stacked on the output dimension
PRE_MLP_NORM_NAMES = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "final_layer_norm")
ACT_CONFIG_KEYS = ("hidden_activation", "hidden_act", "activation_function")
WIDTH_CONFIG_KEYS = ("intermediate_size", "n_inner", "ffn_dim")


def _first(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        sub = getattr(module, name, None)
        if isinstance(sub, nn.Module):
            return sub
    return None


def _linear_weight(lin: nn.Module) -> torch.Tensor:
    """(out, in) weight of an nn.Linear or of GPT-2's Conv1D (stored (in, out))."""
    w = lin.weight.detach()
    return w.t() if type(lin).__name__ == "Conv1D" else w


def _norm_kind(norm: nn.Module, hidden: int) -> tuple[str, float]:
    """('layernorm' | 'rms' | 'rms_offset', eps) of a norm module, the RMS variants told apart by probing it."""
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    if isinstance(norm, nn.LayerNorm) or getattr(norm, "bias", None) is not None:
        return "layernorm", eps
    w = getattr(norm, "weight", None)
    if w is None:
        return "rms", eps
    x = torch.randn(2, hidden, dtype=torch.float32, device=w.device)
    with torch.no_grad():
        got = norm(x.to(w.dtype)).float()
        base = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        plain, offset = base * w.float(), base * (1.0 + w.float())
    return ("rms_offset" if (got - offset).abs().max() < (got - plain).abs().max() else "rms"), eps


def describe_mlp(model: nn.Module, layer_index: int) -> dict[str, Any]:
    """What the MLP of decoder layer ``layer_index`` looks like: projections, width, gating, activation, norm."""
    cfg = text_config(model)
    layer = get_decoder_layers(model)[layer_index]
    mlp = _first(layer, MLP_ATTRIBUTES) or layer
    gate, up, down = _first(mlp, GATE_NAMES), _first(mlp, UP_NAMES), _first(mlp, DOWN_NAMES)
    fused = _first(mlp, FUSED_GATE_UP_NAMES)
    hidden = int(cfg.hidden_size)
    width = None
    if up is not None:
        width = _linear_weight(up).shape[0]
    elif fused is not None:
        width = _linear_weight(fused).shape[0] // 2
    if width is None:
        for key in WIDTH_CONFIG_KEYS:
            if isinstance(getattr(cfg, key, None), int):
                width = int(getattr(cfg, key))
                break
    act = next((getattr(cfg, k) for k in ACT_CONFIG_KEYS if isinstance(getattr(cfg, k, None), str)), "silu")
    if act not in __import__("transformers.activations", fromlist=["ACT2FN"]).ACT2FN:
        act = "silu"
    norm = _first(layer, PRE_MLP_NORM_NAMES)
    norm_kind, eps = _norm_kind(norm, hidden) if norm is not None else ("rms", float(getattr(cfg, "rms_norm_eps", 1e-6)))
    ref = down if down is not None else up
    return {"mlp": mlp, "gate": gate, "up": up, "down": down, "fused": fused, "norm_module": norm,
            "hidden_size": hidden, "width": int(width or 4 * hidden), "gated": gate is not None or fused is not None,
            "hidden_act": act, "bias": bool(ref is not None and getattr(ref, "bias", None) is not None),
            "norm": norm_kind, "norm_eps": eps}


def _copy_rows(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy the overlapping part of ``src`` into ``dst`` (first rows / columns)."""
    r, c = min(dst.shape[0], src.shape[0]), min(dst.shape[-1], src.shape[-1]) if dst.dim() > 1 else None
    if dst.dim() == 1:
        dst[:r].copy_(src[:r])
    else:
        dst[:r, :c].copy_(src[:r, :c])


@register_kind
class MLPReplacement(ReplacementKind):
    name = "mlp"
    citation = ("chen2024streamline", "replacing a pruned block by a lightweight trained module")
    description = "feed-forward module with pre-norm and residual (SwiGLU for gated models); custom StreamlineForCausalLM"
    plain_checkpoint = False

    def build(self, model: nn.Module, start: int, n: int, options: ReplacementOptions) -> nn.Module:
        if options.init not in ("identity", "first_layer"):
            raise StreamlineError("unknown for the mlp replacement; use identity or first_layer",
                                  argument="options.init", value=options.init)
        info = describe_mlp(model, start)
        width = int(options.width or info["width"])
        if width < 1:
            raise StreamlineError("the replacement MLP needs a width >= 1", argument="options.width", value=width)
        gated = info["gated"] if options.gated is None else bool(options.gated)
        record = {"slot": start, "kind": "mlp", "hidden_size": info["hidden_size"], "intermediate_size": width,
                  "gated": gated, "hidden_act": info["hidden_act"], "bias": info["bias"], "norm": info["norm"],
                  "norm_eps": info["norm_eps"], "returns": "tensor"}
        layer = get_decoder_layers(model)[start]
        ref = next(layer.parameters())
        module = StreamlineMLP(record, attention_type=getattr(layer, "attention_type", "full_attention"))
        module.to(device=ref.device, dtype=ref.dtype)
        torch.manual_seed(start)
        module.reset_parameters(std=float(getattr(text_config(model), "initializer_range", 0.02) or 0.02))
        with torch.no_grad():
            norm = info["norm_module"]
            if norm is not None and getattr(norm, "weight", None) is not None and norm.weight.shape == module.norm.weight.shape:
                module.norm.weight.copy_(norm.weight)
                if module.norm.bias is not None and getattr(norm, "bias", None) is not None:
                    module.norm.bias.copy_(norm.bias)
            gate_w = up_w = None
            if info["fused"] is not None:
                w = _linear_weight(info["fused"])
                gate_w, up_w = w.chunk(2, dim=0)
            else:
                gate_w = _linear_weight(info["gate"]) if info["gate"] is not None else None
                up_w = _linear_weight(info["up"]) if info["up"] is not None else None
            if gated and gate_w is not None:
                _copy_rows(module.gate_proj.weight, gate_w)
            if up_w is not None:
                _copy_rows(module.up_proj.weight, up_w)
                up_b = getattr(info["up"], "bias", None) if info["up"] is not None else None
                if module.up_proj.bias is not None and up_b is not None:
                    _copy_rows(module.up_proj.bias, up_b)
            if options.init == "first_layer" and info["down"] is not None:
                _copy_rows(module.down_proj.weight, _linear_weight(info["down"]))
                down_b = getattr(info["down"], "bias", None)
                if module.down_proj.bias is not None and down_b is not None:
                    module.down_proj.bias.copy_(down_b)
        record["init"] = options.init
        module.streamline_record = record
        return module

    def record(self, module: nn.Module | None, slot: int, replaces: list[int]) -> dict[str, Any]:
        rec = dict(getattr(module, "streamline_record", {}))
        rec.update({"slot": slot, "replaces": list(replaces), "returns": getattr(module, "returns", "tensor")})
        return rec
