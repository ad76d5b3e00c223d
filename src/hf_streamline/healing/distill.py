"""``distill``: the pruned student learns the dense teacher's next-token distribution.

Loss = ``kl_weight`` · T² · KL(p_teacher(T) ‖ p_student(T)) + ``lm_weight`` · next-token cross-entropy, averaged over
the real tokens (the ``lm`` objective of :mod:`hf_streamline.training` with a teacher).  What trains is any subset
of the other methods: ``distill`` / ``distill:partial:K`` (lm_head + final norm + last K layers) or ``distill:lora``.

``kd_top_k`` = K: ``heal`` first runs the teacher once (no grad) over the training and validation examples and writes
its top-K logits per token to disk (:mod:`hf_streamline.training.teacher_cache`), drops its reference to the teacher,
and trains against the cache: KL of the teacher's softmax renormalised over its K largest logits to the student's
full-vocabulary log-probabilities at those K ids (:func:`hf_streamline.training.objectives.lm.kl_to_teacher_topk`).
"""

from __future__ import annotations

import numbers
from dataclasses import replace
from typing import Any

from torch import nn

from ..errors import StreamlineError
from .base import HealingMethod, Prepared, register_healing_method
from .lora import LoraHealing
from .partial import PartialHealing

SUBSETS = {"partial": PartialHealing, "lora": LoraHealing}


def check_teacher(student: nn.Module, teacher: nn.Module | None) -> None:
    """The teacher must exist and predict over the same vocabulary as the student."""
    if teacher is None:
        raise StreamlineError("method 'distill' needs the dense model as the teacher (KL(teacher || student) on the "
                              "logits); pass it", argument="teacher")
    s = student.get_output_embeddings().weight.shape[0]
    t = teacher.get_output_embeddings().weight.shape[0]
    if s != t:
        raise StreamlineError(f"predicts over {t} tokens but the pruned model over {s}; distillation needs the dense "
                              "model the pruned one was made from (same tokenizer and vocabulary)", argument="teacher")


@register_healing_method
class DistillHealing(HealingMethod):
    name = "distill"
    citation = None
    description = "KL(dense teacher || pruned student) with temperature (+ optional LM loss) on a partial or LoRA subset"

    def __init__(self, config: Any):
        super().__init__(config)
        subset = config.distill_subset
        if subset not in SUBSETS:
            raise StreamlineError(f"unknown; use one of {sorted(SUBSETS)}", argument="config.distill_subset",
                                  value=subset)
        self.inner = SUBSETS[subset](replace(config, method=subset))
        self.adapter = self.inner.adapter
        self.default_learning_rate = self.inner.default_learning_rate

    @property
    def needs_teacher(self) -> bool:
        return True

    def objective_options(self) -> dict[str, Any]:
        c = self.config
        if c.kl_temperature <= 0:
            raise StreamlineError("must be > 0", argument="config.kl_temperature", value=c.kl_temperature)
        if c.kl_weight <= 0:
            raise StreamlineError("must be > 0 for distillation (use method 'partial' or 'lora' for the LM loss "
                                  "alone)", argument="config.kl_weight", value=c.kl_weight)
        if c.lm_weight < 0:
            raise StreamlineError("must be >= 0", argument="config.lm_weight", value=c.lm_weight)
        k = c.kd_top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise StreamlineError("must be an integer >= 1 (or None: the teacher runs beside the student)",
                                  argument="config.kd_top_k", value=c.kd_top_k)
        return {"objective": "lm", "kl_weight": float(c.kl_weight), "lm_weight": float(c.lm_weight),
                "kl_temperature": float(c.kl_temperature)}

    def check(self, model: nn.Module) -> None:
        self.objective_options()
        k, head = self.config.kd_top_k, model.get_output_embeddings()
        vocab = head.weight.shape[0] if head is not None else None
        if k is not None and vocab is not None and int(k) > vocab:
            raise StreamlineError(f"larger than the vocabulary ({vocab} tokens); use at most {vocab} (the whole "
                                  "distribution)", argument="config.kd_top_k", value=k)
        self.inner.check(model)

    def prepare(self, model: nn.Module, model_path: str | None = None) -> Prepared:
        prepared = self.inner.prepare(model, model_path)
        prepared.info.update({"subset": self.inner.spec(), "kl_temperature": self.config.kl_temperature,
                              "kl_weight": self.config.kl_weight, "lm_weight": self.config.lm_weight,
                              "kd_top_k": None if self.config.kd_top_k is None else int(self.config.kd_top_k)})
        return prepared

    def finish(self, prepared: Prepared, merge: bool = True):
        return self.inner.finish(prepared, merge)

    def spec(self) -> str:
        return f"distill:{self.inner.spec()}"

    @classmethod
    def parse_options(cls, spec: str, options: list[str]) -> dict[str, Any]:
        """``distill:SUBSET[:K]``: what trains (``partial`` or ``lora``) and that subset's own option."""
        if not options:
            return {}
        subset = options[0]
        if subset not in SUBSETS:
            raise StreamlineError(f"healing method {spec!r}: distill trains {' or '.join(map(repr, SUBSETS))}, not "
                                  f"{subset!r}")
        return {"distill_subset": subset, **SUBSETS[subset].parse_options(spec, options[1:])}
