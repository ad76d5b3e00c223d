"""``mse`` (LLM-Streamline): replacement(block input) should equal the block's output.

The model given to the trainer (``hf_streamline.replacement.BlockReplacementTask``) holds the trainable
``replacement``; its forward returns ``{"pred", "target", "token_mask"}``: the replacement applied to the block's input
and the block's output.  A decoder-layer replacement is called with the other arguments the block's first layer received
at inference (causal mask, rotary ``position_embeddings``, position ids), so it is trained causally, as it runs
afterwards.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Objective, register_objective


def masked_mse(pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the hidden dimension and the real (non-pad) tokens, in float32."""
    diff = (pred.float() - target.float()).pow(2).mean(-1)  # (B, T)
    if token_mask is None:
        return diff.mean()
    m = token_mask.to(diff.device, diff.dtype)
    return (diff * m).sum() / m.sum().clamp_min(1.0)


def visible_everywhere(args: tuple, kwargs: dict, batch: int, length: int, device: torch.device) -> tuple[tuple, dict]:
    """The same layer arguments with every attention mask made all-visible (bidirectional attention)."""

    def open_mask(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[-1] == v.shape[-2] == length:
            return torch.ones_like(v) if v.dtype == torch.bool else torch.zeros_like(v)
        if isinstance(v, dict):
            return {k: open_mask(x) for k, x in v.items()}
        return v

    args = tuple(open_mask(a) for a in args)
    kwargs = {k: open_mask(v) for k, v in kwargs.items()}
    if "attention_mask" in kwargs and kwargs["attention_mask"] is None:
        kwargs["attention_mask"] = torch.ones((batch, 1, length, length), dtype=torch.bool, device=device)
    return args, kwargs


@register_objective
class MSEObjective(Objective):
    name = "mse"
    description = "MSE between replacement(block input) and the block's output (LLM-Streamline)"
    label_names = ["attention_mask"]

    def default_trainable(self, model: torch.nn.Module) -> list[str] | None:
        return [r"^replacement\."]

    def compute_loss(self, trainer: Any, model: torch.nn.Module, inputs: dict[str, Any],
                     num_items_in_batch: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
        # through the (possibly DDP-wrapped) model's forward, so gradients synchronise across devices
        out = model(**inputs, open_attention=self.options.get("mask", "causal") == "none")
        loss = masked_mse(out["pred"], out["target"], out.get("token_mask"))
        return loss, {"loss": loss.detach()}
