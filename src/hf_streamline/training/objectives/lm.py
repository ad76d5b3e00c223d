"""``lm``: train the selected parameters in place with the model's next-token loss, optionally plus
KL(teacher || student) on the logits (the dense model as teacher)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Objective, register_objective


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None,
                  temperature: float = 1.0) -> torch.Tensor:
    """Mean over real tokens of KL(p_teacher || p_student) at ``temperature`` (scaled by T^2, as in distillation)."""
    t = float(temperature)
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float().to(s.device) / t, dim=-1)
    kl = (p.exp() * (p - s)).sum(-1)  # (B, T)
    if mask is not None:
        m = mask.to(kl.device, kl.dtype)
        kl = (kl * m).sum() / m.sum().clamp_min(1.0)
    else:
        kl = kl.mean()
    return kl * t * t


@register_objective
class LMObjective(Objective):
    name = "lm"
    description = "next-token cross-entropy of the (pruned) model, optionally + KL to the dense model's logits"
    label_names = ["labels"]

    @property
    def needs_teacher(self) -> bool:  # type: ignore[override]
        return float(self.options.get("kl_weight", 0.0) or 0.0) > 0

    def compute_loss(self, trainer: Any, model: torch.nn.Module, inputs: dict[str, Any],
                     num_items_in_batch: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
        lm_w = float(self.options.get("lm_weight", 1.0))
        kl_w = float(self.options.get("kl_weight", 0.0) or 0.0)
        fwd = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}
        outputs = model(**fwd, use_cache=False)
        loss = outputs.loss * lm_w if lm_w else outputs.logits.new_zeros(())
        out = {"lm_loss": outputs.loss.detach()}
        if kl_w > 0:
            teacher = getattr(trainer, "teacher", None)
            if teacher is None:
                from ...errors import StreamlineError

                raise StreamlineError("the lm objective with kl_weight > 0 needs a teacher model: pass teacher=... "
                                      "to StreamlineTrainer")
            with torch.no_grad():
                t_logits = teacher(**{k: v for k, v in fwd.items() if k != "labels"}, use_cache=False).logits
            kl = kl_to_teacher(outputs.logits, t_logits, inputs.get("attention_mask"),
                               float(self.options.get("kl_temperature", 1.0)))
            loss = loss + kl_w * kl
            out["kl"] = kl.detach()
        out["loss"] = loss.detach()
        return loss, out
