"""Perplexity with the standard sliding-window protocol (the WikiText-2 numbers of the pruning papers)."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import StreamlineError
from .utils import model_device


def read_text(text_or_path: str | os.PathLike) -> str:
    """A path to a text file is read; any other string is the text itself."""
    from .data import resolve_data_spec

    s = resolve_data_spec(str(text_or_path))
    if len(s) < 4096 and "\n" not in s and os.path.isfile(s):
        with open(s, encoding="utf-8") as fh:
            return fh.read()
    return s


def text_token_ids(tokenizer: Any, text: str | os.PathLike | torch.Tensor, max_tokens: int | None = None,
                   what: str = "text") -> torch.Tensor:
    """``text`` (a string, a path, or token ids) as one 1-D stream of token ids, cut to ``max_tokens``; at least 2."""
    if isinstance(text, torch.Tensor):
        ids = text.flatten()
    else:
        ids = tokenizer(read_text(text), return_tensors="pt", add_special_tokens=False).input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise StreamlineError(f"{what} text has {ids.numel()} tokens; at least 2 are needed")
    return ids


@torch.no_grad()
def evaluate_perplexity(model: Any, tokenizer: Any, text: str | os.PathLike | torch.Tensor, seq_len: int = 256,
                        stride: int | None = None, max_tokens: int | None = None, batch_size: int = 4,
                        progress: bool = True) -> float:
    """Perplexity of ``model`` on ``text`` (a string, a path, or a 1-D tensor of token ids).

    The text is tokenized once, as one stream.  Windows of ``seq_len`` tokens start every ``stride`` tokens
    (default: ``seq_len``, i.e. non-overlapping windows, the protocol of the pruning papers); in each window only the
    tokens not already scored by the previous window count, so ``stride < seq_len`` gives the Hugging Face
    "perplexity of fixed-length models" protocol.  Returns exp(mean NLL over the scored tokens).
    """
    stride = stride or seq_len
    if stride <= 0 or stride > seq_len:
        raise StreamlineError(f"stride={stride} must be in 1..seq_len ({seq_len})")
    ids = text_token_ids(tokenizer, text, max_tokens, what="perplexity")
    device = model_device(model)
    windows = []  # (begin, end, number of new target tokens)
    prev_end = 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + seq_len, ids.numel())
        trg = end - prev_end
        if end - begin >= 2 and trg > 0:
            windows.append((begin, end, trg))
        prev_end = end
        if end == ids.numel():
            break
    nll_sum, count = 0.0, 0
    bar = tqdm(total=len(windows), desc="perplexity", disable=not progress, leave=False)
    for i in range(0, len(windows), batch_size):
        group = windows[i:i + batch_size]
        width = max(e - b for b, e, _ in group)
        input_ids = torch.full((len(group), width), 0, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        for j, (b, e, trg) in enumerate(group):
            n = e - b
            input_ids[j, :n] = ids[b:e]
            mask[j, :n] = 1
            labels[j, n - trg:n] = ids[e - trg:e]
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
        shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
        nll = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
        nll_sum += float(nll)
        count += int((shift_labels != -100).sum())
        bar.update(len(group))
    bar.close()
    return math.exp(nll_sum / max(count, 1))
