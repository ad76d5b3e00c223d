"""Perplexity with the standard sliding-window protocol (the WikiText-2 numbers of the pruning papers)."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from .errors import StreamlineError
from .log import progress_bar
from .utils import model_device


def read_text(text_or_path: str | os.PathLike, what: str = "text file") -> str:
    """The text that ``text_or_path`` stands for, decided by its type:

    - an ``os.PathLike`` (``pathlib.Path``) or a ``bundled:NAME`` spec is a file, and is read; a missing, binary or
      non-UTF-8 file is an error (:class:`StreamlineError` naming ``what``);
    - any other ``str`` is the text itself -- except that a one-line ``str`` naming an existing file is read as that
      file (kept for code written before the rule above).

    The CLI passes every file argument (``--eval-text``, ``--ppl`` ...) as a path, so a mistyped file name is an
    error there, never scored as if the name were the text.
    """
    from .validation import read_text_file

    if isinstance(text_or_path, os.PathLike) or str(text_or_path).startswith("bundled:"):
        return read_text_file(text_or_path, what)
    s = str(text_or_path)
    if len(s) < 4096 and "\n" not in s and os.path.isfile(s):
        return read_text_file(s, what)
    return s


def text_token_ids(tokenizer: Any, text: str | os.PathLike | torch.Tensor, max_tokens: int | None = None,
                   what: str = "text") -> torch.Tensor:
    """``text`` (a string, a path, or token ids) as one 1-D stream of token ids, cut to ``max_tokens``; at least 2."""
    if isinstance(text, torch.Tensor):
        ids = text.flatten()
    else:
        ids = tokenizer(read_text(text, f"{what} text file"), return_tensors="pt", add_special_tokens=False).input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise StreamlineError(f"{what} text has {ids.numel()} tokens; at least 2 are needed")
    return ids


MAX_DEFAULT_SEQ_LEN = 2048
MAX_FORWARD_TOKENS = 4096


def default_seq_len(model: Any) -> int:
    """The window the pruning papers use: 2048 tokens, or the model's context when it is shorter."""
    ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if hasattr(model, "config") and hasattr(model.config, "get_text_config"):
        ctx = getattr(model.config.get_text_config(), "max_position_embeddings", ctx)
    return min(MAX_DEFAULT_SEQ_LEN, int(ctx)) if ctx else MAX_DEFAULT_SEQ_LEN


@torch.no_grad()
def evaluate_perplexity(model: Any, tokenizer: Any, text: str | os.PathLike | torch.Tensor, seq_len: int | None = None,
                        stride: int | None = None, max_tokens: int | None = None, batch_size: int = 4,
                        progress: bool = True) -> float:
    """Perplexity of ``model`` on ``text``: the text itself (``str``), a file (``pathlib.Path`` or ``bundled:NAME``;
    see :func:`read_text` for how a ``str`` is told from a file name), or a 1-D tensor of token ids.

    The text is tokenized once, as one stream.  Windows of ``seq_len`` tokens (default: :func:`default_seq_len`,
    min(2048, the model's context)) start every ``stride`` tokens (default: ``seq_len``, i.e. non-overlapping windows,
    the protocol of the pruning papers); in each window only the tokens not already scored by the previous window
    count, so ``stride < seq_len`` gives the Hugging Face "perplexity of fixed-length models" protocol.  Returns
    exp(mean NLL over the scored tokens): the *token* perplexity (see :func:`perplexity_details` for word and byte
    perplexity)."""
    return perplexity_details(model, tokenizer, text, seq_len=seq_len, stride=stride, max_tokens=max_tokens,
                              batch_size=batch_size, progress=progress, units=False)["token_perplexity"]


@torch.no_grad()
def perplexity_details(model: Any, tokenizer: Any, text: str | os.PathLike | torch.Tensor, seq_len: int | None = None,
                       stride: int | None = None, max_tokens: int | None = None, batch_size: int = 4,
                       progress: bool = True, units: bool = True) -> dict[str, Any]:
    """Token perplexity as :func:`evaluate_perplexity`, and (``units``, for a text) the same summed negative
    log-likelihood per word and per UTF-8 byte of the scored text, as lm-eval's ``wikitext`` task reports it:
    ``word_perplexity`` = exp(NLL / words) (words = whitespace-separated pieces), ``byte_perplexity`` =
    exp(NLL / bytes), ``bits_per_byte`` = NLL / bytes / ln 2.  Word and byte perplexity do not depend on the
    tokenizer, so they compare across models with different vocabularies; the windows are ours (non-overlapping
    ``seq_len`` windows of one token stream), not lm-eval's per-document rolling windows, so they equal lm-eval's
    only up to the context each token sees at a window start; the first token of each window is not scored
    (1/``seq_len`` of the tokens) while every word and byte counts, so they read slightly low by that fraction."""
    seq_len = int(seq_len or default_seq_len(model))
    stride = stride or seq_len
    if stride <= 0 or stride > seq_len:
        raise StreamlineError(f"stride={stride} must be in 1..seq_len ({seq_len})")
    if batch_size < 1:
        raise StreamlineError(f"batch_size={batch_size}: give at least 1")
    ids = text_token_ids(tokenizer, text, max_tokens, what="perplexity")
    nll_sum, count = _nll(model, ids, seq_len, stride, batch_size, progress)
    out: dict[str, Any] = {"token_perplexity": math.exp(nll_sum / max(count, 1)), "tokens": count, "seq_len": seq_len,
                           "stride": stride, "nll": nll_sum}
    if units and not isinstance(text, torch.Tensor):
        # the scored text: what the token stream stands for (all of it, or its first max_tokens tokens)
        scored = tokenizer.decode(ids) if max_tokens is not None else read_text(text, "perplexity text file")
        words = len(scored.split())
        n_bytes = len(scored.encode("utf-8"))
        out.update(words=words, bytes=n_bytes, word_perplexity=math.exp(nll_sum / max(words, 1)),
                   byte_perplexity=math.exp(nll_sum / max(n_bytes, 1)),
                   bits_per_byte=nll_sum / max(n_bytes, 1) / math.log(2))
    return out


def _nll(model: Any, ids: torch.Tensor, seq_len: int, stride: int, batch_size: int,
         progress: bool) -> tuple[float, int]:
    """Summed NLL and the number of scored tokens over the windows of ``ids``."""
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
    # at most MAX_FORWARD_TOKENS per forward: the float logits of 2048-token windows over a large vocabulary take
    # GBs per row (49k vocabulary: 0.4 GB per 2048 tokens; 128k: 1 GB)
    batch_size = max(1, min(batch_size, MAX_FORWARD_TOKENS // seq_len))
    bar = progress_bar(total=len(windows), desc="perplexity", disable=not progress, leave=False)
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
    return nll_sum, count
