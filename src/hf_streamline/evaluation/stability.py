"""LLM-Streamline's ``stability``: how much of the original model's behaviour a pruned model keeps, question by question.

Definition (LLM-Streamline, "Streamlining Large Language Models", Sec. on stability):

- for every question ``i``, take the **original** model's perplexity of each option, ``ppl_ij = exp(-ll_ij / T_ij)``
  (``T_ij`` = the option's number of tokens), and its standard deviation over the options, ``s_i``;
- weights ``w = softmax(s)`` over the questions (questions on which the original model separates the options clearly
  weigh more);
- ``stability = sum_i w_i * [original and pruned are both right, or both wrong, on question i]``.

The authors' released code counts the matching questions, ``m``, and then sums the **first** ``m`` weights in question
order -- a different number whenever the matching questions are not the first ones.  ``reference_code_stability``
reproduces that for comparison; ``compute_stability`` is the definition.

Read it with ``effective_questions``: the softmax is taken over raw perplexity spreads, so on a small or weak model
(large perplexities) the weights are close to one-hot and stability says whether the two models agree on one or two
questions.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import StreamlineError


def _std(values: Sequence[float], ddof: int) -> float:
    n = len(values)
    if n - ddof <= 0:
        return 0.0
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - ddof))


def stability_weights(option_perplexities: Sequence[Sequence[float]], ddof: int = 0) -> list[float]:
    """softmax over questions of the standard deviation of each question's option perplexities (population std)."""
    if not option_perplexities:
        raise StreamlineError("stability needs at least one question")
    stds = [_std([float(p) for p in opts], ddof) for opts in option_perplexities]
    if any(not math.isfinite(s) for s in stds):
        bad = next(i for i, s in enumerate(stds) if not math.isfinite(s))
        raise StreamlineError(f"stability: question {bad} has a non-finite perplexity spread {stds[bad]}")
    top = max(stds)
    exps = [math.exp(s - top) for s in stds]  # stable softmax
    z = sum(exps)
    return [e / z for e in exps]


def effective_questions(weights: Sequence[float]) -> float:
    """1 / sum(w^2): how many questions the stability weights really count (n for uniform weights, 1 for one-hot).

    The weights are a softmax of *perplexity* spreads, which are unbounded: when the original model's option
    perplexities differ by tens on some question, nearly all the weight lands there.  Report this beside stability.
    """
    return 1.0 / sum(w * w for w in weights)


def _matches(original_correct: Sequence[int | bool], pruned_correct: Sequence[int | bool]) -> list[bool]:
    if len(original_correct) != len(pruned_correct):
        raise StreamlineError(
            f"stability: the original model has {len(original_correct)} answers and the pruned one "
            f"{len(pruned_correct)}; evaluate both on the same items (the same limit and seed)"
        )
    return [bool(a) == bool(b) for a, b in zip(original_correct, pruned_correct)]


def compute_stability(option_perplexities: Sequence[Sequence[float]], original_correct: Sequence[int | bool],
                      pruned_correct: Sequence[int | bool], ddof: int = 0) -> float:
    """Stability as defined: the summed weight of the questions where both models are right or both are wrong."""
    w = stability_weights(option_perplexities, ddof)
    m = _matches(original_correct, pruned_correct)
    if len(w) != len(m):
        raise StreamlineError(f"stability: {len(w)} questions have perplexities but {len(m)} have answers")
    return float(sum(wi for wi, ok in zip(w, m) if ok))


def reference_code_stability(option_perplexities: Sequence[Sequence[float]], original_correct: Sequence[int | bool],
                             pruned_correct: Sequence[int | bool], ddof: int = 0) -> float:
    """The released reference code's number: the first ``matches`` weights in question order (not the definition)."""
    w = stability_weights(option_perplexities, ddof)
    matches = sum(_matches(original_correct, pruned_correct))
    return float(sum(w[:matches]))


def task_stability(original, pruned, ddof: int = 0) -> float:
    """Stability of two ``TaskResult`` objects of the same task and items (weights from ``original``)."""
    if list(original.indices) != list(pruned.indices):
        raise StreamlineError(f"stability on {original.task!r}: the two results cover different items; evaluate both "
                              "models with the same limit and seed")
    return compute_stability(original.option_perplexities(), original.correct, pruned.correct, ddof)
