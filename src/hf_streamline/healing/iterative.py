"""Iterative pruning with healing: remove ``step`` layers → heal → re-score → … until the target.

One-shot pruning + healing is the special case of one step (``step`` = the number of layers to remove).  Every step is
recorded in the plan: ``steps[i]`` holds the removed layers (original indices), the scores that chose them, the layer
count after the step, perplexity after removal and after healing (with ``eval_text``) and the healing record;
``healing`` gets the same healing records (with their ``step``).  Adapters are merged after every step, so the next
step scores and prunes a plain model.  The token budget / ``max_steps`` applies to each healing step.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..architecture import check_causal_lm, layer_parameter_counts, num_layers
from ..errors import StreamlineError
from ..log import progress_bar
from ..operations import RemoveOp
from ..plan import StreamlinePlan, base_config_record
from ..selection import Target, target_layer_count
from ..utils import versions
from .api import heal
from .base import HealingConfig, get_healing_method
from .data import HealingData


def _goal(target: Target | int, model: nn.Module) -> int:
    """Layers to remove in all: a count, or a layer / parameter fraction (the same rule as one-shot selection)."""
    L = num_layers(model)
    if isinstance(target, int):
        goal = target
    else:
        goal = target_layer_count(target, layer_parameter_counts(model), sum(p.numel() for p in model.parameters()))
    if goal < 1 or goal >= L:
        raise StreamlineError(f"remove {goal} layer(s): must be in 1..{L - 1} for a model with {L} layers")
    return goal


def iterative_prune_and_heal(model: nn.Module, tokenizer: Any, data: HealingData,
                             config: HealingConfig | str | None = None, *, remove: Target | int,
                             step: int | None = None, metric: str = "block_influence", calibration: Any = None,
                             teacher: nn.Module | None = None, base_model: str | None = None,
                             eval_text: Any = None, eval_tokens: int | None = None, eval_seq_len: int = 256,
                             protect_first: int = 0, protect_last: int = 0, batch_size: int = 8, seed: int = 0,
                             progress: bool = True) -> tuple[nn.Module, StreamlinePlan]:
    """Prune ``remove`` layers of the dense ``model`` in steps of ``step`` (``None``: one shot), healing after every
    step with ``config`` (see :func:`hf_streamline.healing.heal`).  Returns ``(healed model, plan)``.

    ``teacher`` (for ``distill`` and ``self_distill``) defaults to a copy of the dense ``model`` taken before the
    first removal; ``self_distill`` data is generated once, before the first step, and every step heals on it.
    """
    from ..perplexity import evaluate_perplexity
    from ..pruning import prune
    from ..scores import get_scorer

    check_causal_lm(model)
    if config is None:
        config = HealingConfig()
    elif isinstance(config, str):
        config = HealingConfig().with_spec(config)
    method = get_healing_method(config)
    if config.tied_policy == "auto" and config.base_parameters is None:  # never outgrow the dense model
        from .base import count_parameters

        config = copy.deepcopy(config)
        config.base_parameters = count_parameters(model)
    get_scorer(metric)
    L = num_layers(model)
    goal = _goal(remove, model)
    step = goal if step is None else int(step)
    if step < 1:
        raise StreamlineError("must be >= 1", argument="step", value=step)
    final_layers = L - goal
    k = config.last_k if "partial" in method.spec() else None
    if k is not None and k > final_layers:
        raise StreamlineError(f"larger than the {final_layers} decoder layers left after removing {goal} of {L}; use "
                              f"a value in 0..{final_layers}", argument="config.last_k", value=k)
    self_distill_info = None
    if teacher is None and (method.needs_teacher or config.self_distill is not None):
        teacher = copy.deepcopy(model)
        teacher.eval()
    if config.self_distill is not None:  # the dense model's continuations, generated once for every step
        from .self_distill import self_distill_data

        data, self_distill_info = self_distill_data(teacher, tokenizer, data, config)
        config = copy.deepcopy(config)
        config.self_distill = None
        if not method.needs_teacher:
            teacher = None
    name = base_model or getattr(model.config, "_name_or_path", "") or "unknown"
    plan = StreamlinePlan(base_model=name, num_layers_before=L, method="remove", metric=metric,
                          selection="iterative" if step < goal else "layers",
                          calibration=calibration.recipe() if calibration is not None else None, versions=versions(),
                          base_config=base_config_record(model))
    plan.extra["target"] = {"layers": goal}
    plan.extra["healing_schedule"] = {"mode": "iterative" if step < goal else "one-shot", "step": step,
                                      "method": method.spec(), "steps": -(-goal // step),
                                      "budget_tokens_per_step": config.budget_tokens,
                                      "max_steps_per_step": config.max_steps}

    def ppl(m: nn.Module) -> float | None:
        if eval_text is None:
            return None
        return evaluate_perplexity(m, tokenizer, eval_text, seq_len=eval_seq_len, max_tokens=eval_tokens,
                                   batch_size=batch_size, progress=False)

    current = list(range(L))
    plan.evaluation["perplexity_dense"] = ppl(model)
    bar = progress_bar(total=goal, desc="prune + heal", disable=not progress, leave=False)
    while len(current) > final_layers:
        n = min(step, len(current) - final_layers)
        model, sub = prune(model, metric=metric, target=Target(layers=n), calibration=calibration, selection="layers",
                           protect_first=protect_first, protect_last=protect_last, batch_size=batch_size,
                           seed=seed + len(plan.steps), progress=False)
        removed = [current[i] for i in sub.removed_layers]
        current = [o for o in current if o not in set(removed)]
        plan.operations.append(RemoveOp(layers=removed))
        after_removal = ppl(model)
        result = heal(model, tokenizer, data, copy.deepcopy(config), teacher=teacher, merge=True)
        model = result.model
        after_healing = ppl(model)
        record = dict(result.record, step=len(plan.steps) + 1)
        if self_distill_info is not None:
            record["self_distill"] = dict(self_distill_info, generated_once=True)
        plan.healing.append(record)
        plan.steps.append({"step": len(plan.steps) + 1, "removed": removed, "layers_after": len(current),
                           "scores": sub.scores.get(metric), "perplexity_after_removal": after_removal,
                           "perplexity_after_healing": after_healing,
                           "healing": {k_: v for k_, v in record.items() if k_ not in ("loss_curve", "data")}})
        bar.update(n)
    bar.close()
    if plan.steps and plan.steps[0].get("scores") is not None:
        plan.scores[metric] = plan.steps[0]["scores"]
    plan.evaluation["perplexity"] = {"text": str(eval_text) if eval_text is not None else None,
                                     "before": plan.evaluation.get("perplexity_dense"),
                                     "after": plan.steps[-1]["perplexity_after_healing"] if plan.steps else None}
    return model, plan
