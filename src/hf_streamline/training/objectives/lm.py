"""``lm``: train the selected parameters in place with the model's next-token loss, optionally plus
KL(teacher || student) on the logits (the dense model as teacher, or its top-K logits cached on disk: a
:class:`~hf_streamline.training.teacher_cache.TopKTeacherCache` as the trainer's teacher)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..teacher_cache import EXAMPLE_INDEX, TopKTeacherCache
from .base import Objective, register_objective


def _masked_kl(p_log: torch.Tensor, s_log: torch.Tensor, mask: torch.Tensor | None, t: float) -> torch.Tensor:
    """Mean over real tokens of sum_v p (log p - log s) over the last dimension, scaled by T^2."""
    kl = (p_log.exp() * (p_log - s_log)).sum(-1)  # (B, T)
    if mask is not None:
        m = mask.to(kl.device, kl.dtype)
        kl = (kl * m).sum() / m.sum().clamp_min(1.0)
    else:
        kl = kl.mean()
    return kl * t * t


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None,
                  temperature: float = 1.0) -> torch.Tensor:
    """Mean over real tokens of KL(p_teacher || p_student) at ``temperature`` (scaled by T^2, as in distillation)."""
    t = float(temperature)
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float().to(s.device) / t, dim=-1)
    return _masked_kl(p, s, mask, t)


def kl_to_teacher_topk(student_logits: torch.Tensor, topk_values: torch.Tensor, topk_indices: torch.Tensor,
                       mask: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """:func:`kl_to_teacher` from the teacher's top-K logits only (``topk_values`` / ``topk_indices``, ``(B, T, K)``):
    the standard "sparse KD" form.

    The teacher distribution is the softmax of its K largest logits at ``temperature``, renormalised over those K
    entries; the student's log-probabilities are its *full-vocabulary* ``log_softmax`` at ``temperature`` gathered at
    the same K ids (not renormalised), so the student is still pushed away from the tokens the teacher leaves out.
    Masking (mean over ``mask`` = 1 tokens) and the T^2 scale are those of :func:`kl_to_teacher`; with K = the
    vocabulary size both are the same KL.
    """
    t = float(temperature)
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    s = s.gather(-1, topk_indices.to(s.device, torch.long))
    p = F.log_softmax(topk_values.float().to(s.device) / t, dim=-1)
    return _masked_kl(p, s, mask, t)


def forward_from_cached_prefix(trainer: Any, model: torch.nn.Module, fwd: dict[str, Any], cache: TopKTeacherCache,
                               example_index: torch.Tensor) -> Any:
    """``model(**fwd)`` with its decoder layers below ``cache.hidden_layer`` skipped and the cached input of that
    layer injected (the frozen prefix the teacher's pass already computed; see
    :mod:`hf_streamline.training.teacher_cache`).  The embeddings still run (a gather), the skipped layers pass their
    input through, and autograd never sees them: the logits are those of the full forward."""
    from ...architecture import get_decoder_layers, skip_layers
    from ...capture import inject_layer_input

    base = trainer.accelerator.unwrap_model(model) if hasattr(trainer, "accelerator") else model
    p = int(cache.hidden_layer)
    layer = get_decoder_layers(base)[p]
    hidden = cache.hidden(example_index, fwd.get("attention_mask"), width=int(fwd["input_ids"].shape[1]))
    param = next(layer.parameters())
    handle = inject_layer_input(layer, hidden.to(param.device, param.dtype))
    try:
        with skip_layers(base, range(p)):
            return model(**fwd, use_cache=False)
    finally:
        handle.remove()


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
        if not lm_w and not kl_w:
            from ...errors import StreamlineError

            raise StreamlineError("the lm objective with lm_weight 0 and kl_weight 0 has no loss: give lm_weight > 0 "
                                  "(next-token loss) or kl_weight > 0 (distillation)")
        # pure distillation (lm_weight 0) does not pass the labels: the model's cross-entropy (one more log-softmax
        # over the whole vocabulary for every token) would be computed only to be multiplied by 0
        keys = ("input_ids", "attention_mask", "position_ids") + (("labels",) if lm_w else ())
        fwd = {k: v for k, v in inputs.items() if k in keys}
        teacher = getattr(trainer, "teacher", None)
        if isinstance(teacher, TopKTeacherCache) and teacher.hidden_layer is not None and EXAMPLE_INDEX in inputs:
            outputs = forward_from_cached_prefix(trainer, model, fwd, teacher, inputs[EXAMPLE_INDEX])
        else:
            outputs = model(**fwd, use_cache=False)
        loss = outputs.loss * lm_w if lm_w else outputs.logits.new_zeros(())
        out = {"lm_loss": outputs.loss.detach()} if lm_w else {}
        if kl_w > 0:
            if teacher is None:
                from ...errors import StreamlineError

                raise StreamlineError("the lm objective with kl_weight > 0 needs a teacher model: pass teacher=... "
                                      "to StreamlineTrainer")
            temperature = float(self.options.get("kl_temperature", 1.0))
            if isinstance(teacher, TopKTeacherCache):  # the teacher's top-k logits, cached before training
                if EXAMPLE_INDEX not in inputs:
                    from ...errors import StreamlineError

                    raise StreamlineError(f"a cached teacher (TopKTeacherCache) needs {EXAMPLE_INDEX!r} in every batch: "
                                          "wrap the datasets in IndexedExamples and the collator in indexed_collator")
                values, indices = teacher.lookup(inputs[EXAMPLE_INDEX], inputs.get("attention_mask"),
                                                 width=int(outputs.logits.shape[1]))
                kl = kl_to_teacher_topk(outputs.logits, values, indices, inputs.get("attention_mask"), temperature)
            else:
                with torch.no_grad():
                    t_logits = teacher(**{k: v for k, v in fwd.items() if k != "labels"}, use_cache=False).logits
                kl = kl_to_teacher(outputs.logits, t_logits, inputs.get("attention_mask"), temperature)
            loss = loss + kl_w * kl
            out["kl"] = kl.detach()
        out["loss"] = loss.detach()
        return loss, out
