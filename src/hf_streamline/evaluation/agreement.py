"""Agreement of a pruned model with its dense model: same answers, same next-token distributions.

- ``same_prediction_rate``: fraction of questions where both choose the same option (for ``last_word`` tasks: the same
  greedy tokens at every continuation position, teacher-forced);
- ``next_token_agreement``: on running text, mean ``KL(dense || pruned)`` of the next-token distributions (nats per
  token) and the fraction of positions where both put the same token on top (top-1 agreement).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from ..errors import StreamlineError
from ..log import progress_bar
from ..perplexity import text_token_ids
from ..utils import model_device


def same_prediction_rate(preds_a: Sequence[Any], preds_b: Sequence[Any]) -> float:
    if len(preds_a) != len(preds_b):
        raise StreamlineError(f"same-prediction rate: {len(preds_a)} vs {len(preds_b)} predictions; "
                              "evaluate both models on the same items")
    if not preds_a:
        raise StreamlineError("same-prediction rate: no predictions")
    return sum(1 for a, b in zip(preds_a, preds_b) if a == b) / len(preds_a)


def task_same_prediction_rate(result_a, result_b) -> float:
    """Same-prediction rate of two ``TaskResult`` objects on the same items."""
    if list(result_a.indices) != list(result_b.indices):
        raise StreamlineError(f"{result_a.task!r}: the two results cover different items; evaluate both with the same "
                              "limit and seed")
    return same_prediction_rate(result_a.pred, result_b.pred)


@torch.no_grad()
def next_token_agreement(dense: Any, pruned: Any, tokenizer: Any, text: str | os.PathLike | torch.Tensor,
                         seq_len: int = 256, max_tokens: int | None = 8192, batch_size: int = 2,
                         progress: bool = True) -> dict[str, float]:
    """Mean KL(dense || pruned) (nats/token) and top-1 agreement over non-overlapping windows of ``text``.

    Both models must share the tokenizer (same vocabulary).  Every position of every window counts, including the
    first of a window (whose context is that window only).
    """
    ids = text_token_ids(tokenizer, text, max_tokens, what="agreement")
    windows = [ids[i:i + seq_len] for i in range(0, ids.numel(), seq_len)]
    windows = [w for w in windows if w.numel() >= 2]
    kl_sum, agree, count = 0.0, 0, 0
    dev_a, dev_b = model_device(dense), model_device(pruned)
    bar = progress_bar(total=len(windows), desc="agreement", disable=not progress, leave=False)
    for i in range(0, len(windows), batch_size):
        group = windows[i:i + batch_size]
        width = max(w.numel() for w in group)
        x = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for j, w in enumerate(group):
            x[j, :w.numel()] = w
            mask[j, :w.numel()] = 1
        la = dense(input_ids=x.to(dev_a), attention_mask=mask.to(dev_a)).logits.float()
        lb = pruned(input_ids=x.to(dev_b), attention_mask=mask.to(dev_b)).logits.float().to(la.device)
        if la.shape[-1] != lb.shape[-1]:
            raise StreamlineError(f"agreement: the models have different vocabularies ({la.shape[-1]} vs {lb.shape[-1]})")
        m = mask.to(la.device).bool()
        pa, pb = la.log_softmax(-1)[m], lb.log_softmax(-1)[m]
        kl_sum += float((pa.exp() * (pa - pb)).sum())
        agree += int((pa.argmax(-1) == pb.argmax(-1)).sum())
        count += int(m.sum())
        bar.update(len(group))
    bar.close()
    return {"kl": kl_sum / count, "top1_agreement": agree / count, "tokens": count}
