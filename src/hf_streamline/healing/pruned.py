"""Healing a pruned model folder: the decisions ``hf-streamline heal`` and a recipe's ``heal`` stage take, as one
library call (hf_streamline.healing.heal does the training)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

from ..plan import StreamlinePlan


@dataclass
class HealingSources:
    """Where a pruned model came from, as healing needs it."""

    folder: str | None  # the local folder it was loaded from (its plan, QLoRA's reload), None for a Hub id / .gguf
    model_path: str | None  # what QLoRA may reload in 4 bits: the folder, when it was loaded unchanged (no dtype)
    adapter_base: str | None  # what an unmerged adapter names as its base: the folder, a Hub id, or None (.gguf:
    #                           the base is saved beside the adapter)


def healing_sources(spec: str, dtype: str | None = None) -> HealingSources:
    """The folder, reloadable path and adapter base of the model ``spec`` (resolved: a folder, Hub id or .gguf)."""
    folder = spec if os.path.isdir(spec) else None
    return HealingSources(folder=folder, model_path=folder if dtype is None else None,
                          adapter_base=folder or (None if str(spec).endswith(".gguf") else spec))


def heal_pruned(model: Any, tokenizer: Any, data: Any, config: Any, plan: StreamlinePlan, *, teacher: Any = None,
                model_path: str | None = None, merge: bool = False, **trainer: Any):
    """Heal ``model``, the pruned model ``plan`` describes, with ``config`` (a HealingConfig; not modified):

    - a cut-relative ``last_k`` (``cut``, ``cut+N``) becomes a number of layers from the plan (the result's record
      records both: ``last_k_cut = {"spec": "cut+2", "layers": 14}``);
    - with ``tied_policy="auto"`` and no ``base_parameters``, the base model's size is estimated (the teacher's, else
      the pruned model's plus its removed layers), so that untying never makes the model larger than its base;
    - ``teacher``: the dense model, or a function that loads it (called once; then this call holds its only
      reference).  Where healing is done with it before training starts (its top-k logits cached, or
      self-distillation data generated without distillation), it is handed over so that it is freed then;
    - an adapter is merged into the weights only with ``merge=True`` (a full-parameter method trains the weights).

    ``trainer``: the keywords of :func:`hf_streamline.healing.heal` (``output_dir``, ``save_steps``,
    ``resume_from_checkpoint``, ``callbacks``).  Returns its :class:`HealingResult`."""
    from . import heal  # (the package's name, read at call time)
    from .base import estimate_base_parameters, get_healing_method
    from .partial import is_cut, resolve_last_k

    config = copy.copy(config)
    method = get_healing_method(config)
    if teacher is not None and not hasattr(teacher, "parameters"):  # a loader
        teacher = teacher()
    spec = None
    if is_cut(config.last_k):
        spec, config.last_k = config.last_k, resolve_last_k(config.last_k, plan)
    if config.tied_policy == "auto" and config.base_parameters is None:  # healing never outgrows the base model
        config.base_parameters = estimate_base_parameters(model, plan.num_layers_before, teacher)
    if teacher is not None and (config.kd_top_k or not method.needs_teacher):
        teacher = [teacher].pop  # heal holds the only reference and frees the teacher once it has used it
    result = heal(model, tokenizer, data, config, teacher=teacher, model_path=model_path,
                  merge=bool(merge) or not method.adapter, **trainer)
    if spec is not None:
        result.record["last_k_cut"] = {"spec": spec, "layers": config.last_k}
    return result
