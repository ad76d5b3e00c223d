"""Generative checks: does the pruned model still *write* what its dense model writes?

Multiple-choice accuracy overstates what survives pruning (arXiv 2602.01997: generative ability does not come back
even after long fine-tuning), so the evaluation also compares greedy generations.  Prompts are windows of
``prompt_tokens`` tokens evenly spread over a held-out text (the agreement text); both models continue every prompt
greedily for exactly ``new_tokens`` tokens (EOS does not stop them, so every continuation has the same length).

Per prompt, against the dense continuation:
- ``exact_match``: the whole continuation is identical;
- ``prefix_tokens``: how many tokens agree before the first difference (greedy decoding diverges for good there);
- ``token_match``: the fraction of positions with the same token;
- ``rouge_l``: ROUGE-L F1 on tokens (longest common subsequence), which forgives a shifted but similar text.
Each is averaged over the prompts.  A model against itself scores 1.0 (``prefix_tokens`` = ``new_tokens``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import StreamlineError
from ..perplexity import text_token_ids
from ..utils import model_device


def generation_prompts(tokenizer: Any, text: Any, n: int = 16, prompt_tokens: int = 32,
                       new_tokens: int = 32) -> torch.Tensor:
    """``n`` prompts of ``prompt_tokens`` token ids, windows evenly spread over ``text`` (a string, a file, ids)."""
    if n < 1 or prompt_tokens < 1 or new_tokens < 1:
        raise StreamlineError(f"generation needs at least 1 prompt, prompt token and new token (got {n}, "
                              f"{prompt_tokens}, {new_tokens})")
    ids = text_token_ids(tokenizer, text, what="generation")
    if ids.numel() < prompt_tokens:
        raise StreamlineError(f"the generation text has {ids.numel()} tokens; a prompt needs {prompt_tokens}")
    last = ids.numel() - prompt_tokens
    starts = torch.linspace(0, last, n).round().long().tolist()
    return torch.stack([ids[s:s + prompt_tokens] for s in starts])


@torch.no_grad()
def greedy_continuations(model: Any, prompts: torch.Tensor, new_tokens: int = 32, batch_size: int = 8) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens after each prompt (rows of equal length: no padding), ``[N, new_tokens]``."""
    device = model_device(model)
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    pad = (pad[0] if isinstance(pad, (list, tuple)) else pad) if pad is not None else 0
    out = []
    for i in range(0, prompts.shape[0], batch_size):
        ids = prompts[i:i + batch_size].to(device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                             temperature=None, top_p=None, top_k=None)
        out.append(gen[:, ids.shape[1]:].cpu())
    return torch.cat(out)


def rouge_l_f1(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """ROUGE-L F1 of two token sequences (longest common subsequence; 1.0 for equal non-empty sequences)."""
    a, b = list(candidate), list(reference)
    if not a or not b:
        return float(a == b)
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def compare_continuations(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, Any]:
    """The generative agreement of ``candidate`` with ``reference`` (both ``[N, T]`` token ids)."""
    if reference.shape != candidate.shape:
        raise StreamlineError(f"continuations differ in shape: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    n, t = reference.shape
    same = reference == candidate
    prefix = [int(row.tolist().index(False)) if not bool(row.all()) else t for row in same]
    return {"prompts": n, "new_tokens": t,
            "exact_match": float(same.all(dim=1).float().mean()),
            "prefix_tokens": sum(prefix) / n,
            "token_match": float(same.float().mean()),
            "rouge_l": sum(rouge_l_f1(c.tolist(), r.tolist()) for c, r in zip(candidate, reference)) / n}


def generation_agreement(base: Any, model: Any, tokenizer: Any, text: Any, n: int = 16, prompt_tokens: int = 32,
                         new_tokens: int = 32, batch_size: int = 8,
                         reference: torch.Tensor | None = None,
                         prompts: torch.Tensor | None = None) -> dict[str, Any]:
    """Greedy generations of ``model`` against those of ``base`` on ``n`` prompts from ``text`` (see the module
    docstring); ``reference`` / ``prompts`` = the base model's continuations and the prompts when already computed
    (several pruned models against one base)."""
    if prompts is None:
        prompts = generation_prompts(tokenizer, text, n, prompt_tokens, new_tokens)
    if reference is None:
        reference = greedy_continuations(base, prompts, new_tokens, batch_size)
    candidate = greedy_continuations(model, prompts, new_tokens, batch_size)
    out = compare_continuations(reference, candidate)
    out["prompt_tokens"] = prompt_tokens
    out["example"] = {"prompt": tokenizer.decode(prompts[0]), "base": tokenizer.decode(reference[0]),
                      "model": tokenizer.decode(candidate[0])}
    return out


__all__ = ["compare_continuations", "generation_agreement", "generation_prompts", "greedy_continuations", "rouge_l_f1"]
