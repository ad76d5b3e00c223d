"""How the window search compares the merged model's final output with the original's (one class per choice).

Every criterion is a *similarity*: higher is better, 1.0 for an unchanged model, so the threshold search and the
bisection of target mode work the same for all of them.

- ``output_cosine`` (the SLM paper, and its released code): per calibration sequence, the cosine between the
  flattened final outputs (tokens x hidden, padding excluded) of the merged and the original model, averaged over
  sequences.  The final output is the body's ``last_hidden_state`` (after the final norm), the tensor the released
  code reads as ``output_hidden_states[-1]``.  One flattened vector per sequence: a few tokens or dimensions with
  a large norm can decide it (on SmolLM2 the first token of every sequence does, see docs/merging.md).
- ``token_cosine``: the mean over tokens of the per-token cosine between the two final outputs; by default the first
  token of every sequence (the attention-sink position) is left out (``skip_first_tokens``).
- ``logits_kl``: ``exp(-KL)``, KL = the mean over tokens of KL(p_original || p_merged) of the next-token
  distributions (``lm_head`` applied to the final outputs).  A divergence turned into a similarity in (0, 1]:
  ``--threshold 0.9`` means "mean KL below -ln 0.9 = 0.105 nats".  The original model's distributions are computed
  once per calibration sequence and cached as their ``kl_topk`` most likely tokens + one "rest" bucket (default
  256; the KL over those K + 1 outcomes is 0 for an unchanged model and a lower bound of the full KL; ``0`` = the
  full vocabulary, recomputed in every trial); the merged model's log-softmax is computed one sequence at a time,
  so memory stays at one sequence's T x vocabulary logits plus N x T x K cached values.
- ``cka``: linear CKA with the unbiased HSIC estimator between the two final outputs, tokens as samples (minibatch
  CKA over calibration batches; see :mod:`hf_streamline.merging.cka`).

Leaving positions out: the search passes every criterion the attention mask with the first ``skip_first_tokens``
real tokens of each sequence zeroed (``--skip-first-tokens``; the default is the criterion's own:
``token_cosine`` 1, the others 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..plugins import OUTPUT_SIMILARITIES
from .cka import CKAAccumulator


class OutputSimilarity:
    name = ""
    default_skip_first_tokens = 0
    needs_logits = False  # the criterion compares next-token distributions: the search hands it ``head``

    def add(self, out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, batch_index: int) -> None:
        raise NotImplementedError  # pragma: no cover

    def value(self) -> float:
        raise NotImplementedError  # pragma: no cover


class OutputCosine(OutputSimilarity):
    name = "output_cosine"

    def __init__(self, **_: object):
        self.total, self.count = 0.0, 0

    def add(self, out, ref, mask, batch_index):
        m = mask.to(out.device).bool()
        for i in range(out.shape[0]):
            o = out[i][m[i]].double().flatten()
            r = ref[i][m[i]].to(out.device).double().flatten()
            den = o.norm() * r.norm()
            self.total += float((o @ r) / den) if float(den) > 0 else 0.0
            self.count += 1

    def value(self):
        return self.total / max(self.count, 1)


class TokenCosine(OutputSimilarity):
    name = "token_cosine"
    default_skip_first_tokens = 1

    def __init__(self, **_: object):
        self.total, self.count = 0.0, 0

    def add(self, out, ref, mask, batch_index):
        m = mask.to(out.device).bool()
        o, r = out[m].double(), ref.to(out.device)[m].double()
        if o.shape[0] == 0:
            return
        cos = torch.nn.functional.cosine_similarity(o, r, dim=-1, eps=1e-30)
        self.total += float(cos.sum())
        self.count += int(o.shape[0])

    def value(self):
        return self.total / max(self.count, 1)


class LogitsKL(OutputSimilarity):
    """``exp(-mean KL(p_original || p_merged))`` over the (unmasked) tokens; see the module docstring.

    With ``kl_topk = K`` the original model's next-token distribution is cached as its K most likely tokens plus one
    "rest" bucket holding the remaining probability, and the merged model's distribution is grouped the same way
    (its full-vocabulary log-softmax gathered at those K ids, plus its own rest).  That is the exact KL between the
    two distributions over K + 1 outcomes: 0 for an unchanged model, never more than the full KL (grouping outcomes
    cannot increase a divergence), and the full KL when K is the vocabulary.  ``kl_topk = 0`` computes the full KL
    (:func:`~hf_streamline.training.objectives.lm.kl_to_teacher`), recomputing the original logits in every trial.
    """

    name = "logits_kl"
    needs_logits = True

    def __init__(self, head: Callable[[torch.Tensor], torch.Tensor] | None = None, cache: dict | None = None,
                 kl_topk: int | None = 256, **_: object):
        if head is None:
            raise ValueError("logits_kl needs the model's output head (the search passes it)")
        self.head, self.cache = head, cache if cache is not None else {}
        self.topk = int(kl_topk or 0)
        self.total, self.count = 0.0, 0

    def _teacher(self, ref: torch.Tensor, b: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The original model's top-K log-probabilities and their ids for sequence ``i`` of batch ``b`` (cached)."""
        key = ("logits_kl", self.topk, b, i)
        if key not in self.cache:
            logits = self.head(ref).float()
            top = torch.topk(logits, min(self.topk, logits.shape[-1]), dim=-1)
            self.cache[key] = (self._log_probs(logits, top.indices), top.indices)
        return self.cache[key]

    @staticmethod
    def _log_probs(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """float64 log-probabilities at ``indices`` (one float32 logsumexp, no full log-softmax tensor; computed the
        same way for both models, so an unchanged model gives exactly KL = 0)."""
        logits = logits.float()
        lse = torch.logsumexp(logits, dim=-1, keepdim=True).double()
        return logits.gather(-1, indices).double() - lse

    @staticmethod
    def _log_rest(logp_top: torch.Tensor) -> torch.Tensor:
        """log(1 - sum exp(logp_top)) over the last dimension, clamped (the "rest" bucket)."""
        mass = logp_top.double().exp().sum(-1).clamp(max=1.0)
        return torch.log1p(-mass).clamp(min=-80.0)

    def _topk_kl(self, student: torch.Tensor, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        s = self._log_probs(student, indices.to(student.device))
        p = values.to(student.device).double()
        kl = (p.exp() * (p - s)).sum(-1)
        if indices.shape[-1] < student.shape[-1]:  # the rest bucket (empty when K is the whole vocabulary)
            p_rest, s_rest = self._log_rest(p), self._log_rest(s)
            kl = kl + p_rest.exp() * (p_rest - s_rest)
        return kl.clamp(min=0.0)  # (1, T): per-token KL over K + 1 outcomes

    def add(self, out, ref, mask, batch_index):
        from ..training.objectives.lm import kl_to_teacher

        m = mask.to(out.device)
        for i in range(out.shape[0]):
            n = int(m[i].sum())
            if n == 0:
                continue
            student = self.head(out[i:i + 1])
            if self.topk:
                values, indices = self._teacher(ref[i:i + 1].to(out.device), batch_index, i)
                per_token = self._topk_kl(student, values, indices)
                kl = float((per_token * m[i:i + 1].double()).sum()) / n
            else:
                kl = float(kl_to_teacher(student, self.head(ref[i:i + 1].to(out.device)), m[i:i + 1]))
            self.total += max(kl, 0.0) * n
            self.count += n

    def mean_kl(self) -> float:
        return self.total / max(self.count, 1)

    def value(self):
        return math.exp(-self.mean_kl())


class OutputCKA(OutputSimilarity):
    name = "cka"

    def __init__(self, max_gram_tokens: int = 1024, **_: object):
        self.acc = CKAAccumulator("linear", max_gram_tokens=max_gram_tokens)

    def add(self, out, ref, mask, batch_index):
        m = mask.to(out.device).bool()
        self.acc.add(out[m], ref.to(out.device)[m], seed=batch_index)

    def value(self):
        return self.acc.value()


for _cls in (OutputCosine, TokenCosine, LogitsKL, OutputCKA):
    OUTPUT_SIMILARITIES.register(_cls)


def get_output_similarity(name: str, **kwargs: object) -> OutputSimilarity:
    return OUTPUT_SIMILARITIES.create(name, **kwargs)


def skip_first_positions(mask: torch.Tensor, k: int) -> torch.Tensor:
    """``mask`` with the first ``k`` real tokens of every row zeroed (works with left or right padding)."""
    if k <= 0:
        return mask
    m = mask.bool()
    return (m & (m.long().cumsum(-1) > k)).to(mask.dtype)


def output_head(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden (after the final norm) -> next-token logits, as the model's own forward computes them: the output
    embedding, then ``final_logit_softcapping`` (Gemma 2/3) or ``logit_scale`` (Cohere) where the config has them."""
    from ..errors import StreamlineError

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise StreamlineError(f"{type(model).__name__} has no output embedding: --similarity logits_kl needs one")
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        x = head(hidden.to(head.weight.dtype) if hasattr(head, "weight") else hidden)
        if isinstance(scale, (int, float)) and scale:
            x = x * scale
        if cap:
            x = torch.tanh(x / cap) * cap
        return x

    return logits
