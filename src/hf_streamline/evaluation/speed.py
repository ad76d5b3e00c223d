"""Size and speed: parameter counts, prefill and decode throughput (KV cache), several models interleaved.

Timing protocol: every repeat measures every model once, in a rotating order (so no model always runs first or after the
same neighbour), after one untimed warm-up per model; the reported figure is the median over repeats.  Prefill is one
forward pass over a ``prompt_len``-token prompt; decode is ``new_tokens`` single-token steps through the model's KV
cache, greedy, after that prefill (not timed).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ..architecture import text_config
from ..log import progress_bar
from ..utils import model_device


def parameter_counts(model: Any) -> dict[str, int]:
    """``params``: unique parameters (tied weights counted once); ``non_embedding_params``: without the weights of
    ``nn.Embedding`` modules (token and learned position embeddings) -- transformers' ``num_parameters`` conventions.
    An untied ``lm_head`` is a Linear and counts as non-embedding there, as in transformers."""
    if hasattr(model, "num_parameters"):
        return {"params": int(model.num_parameters()),
                "non_embedding_params": int(model.num_parameters(exclude_embeddings=True))}
    seen: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    total = sum(p.numel() for p in seen.values())
    return {"params": int(total), "non_embedding_params": int(total - sum(p.numel() for i, p in seen.items() if i in emb))}


@torch.no_grad()
def _prefill(model: Any, ids: torch.Tensor) -> tuple[float, Any, torch.Tensor]:
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1) if _keeps(model) else model(input_ids=ids, use_cache=True)
    _sync(ids.device)
    return time.perf_counter() - t0, out.past_key_values, out.logits[:, -1]


@torch.no_grad()
def _decode(model: Any, past: Any, last_logits: torch.Tensor, steps: int) -> float:
    nxt = last_logits.argmax(-1, keepdim=True)
    _sync(nxt.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(nxt.device)
    return time.perf_counter() - t0


def _keeps(model: Any) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_speed(models: dict[str, Any], prompt_len: int = 128, new_tokens: int = 32, repeats: int = 5,
                  batch_size: int = 1, seed: int = 0, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Prefill and decode tokens/s of every model (median over ``repeats`` interleaved runs)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = min(int(getattr(text_config(m), "vocab_size", 1000)) for m in models.values())
    ids = torch.randint(3, max(vocab, 4), (batch_size, prompt_len), generator=gen)
    labels = list(models)
    for label in labels:  # warm-up, untimed
        m = models[label]
        _, past, last = _prefill(m, ids.to(model_device(m)))
        _decode(m, past, last, min(4, new_tokens))
    times: dict[str, dict[str, list[float]]] = {l: {"prefill_s": [], "decode_s": []} for l in labels}
    bar = progress_bar(total=repeats * len(labels), desc="speed", disable=not progress, leave=False)
    for r in range(repeats):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            m = models[label]
            dt, past, last = _prefill(m, ids.to(model_device(m)))
            times[label]["prefill_s"].append(dt)
            times[label]["decode_s"].append(_decode(m, past, last, new_tokens))
            del past
            bar.update(1)
    bar.close()
    out = {}
    for label in labels:
        p = statistics.median(times[label]["prefill_s"])
        d = statistics.median(times[label]["decode_s"])
        out[label] = {"prefill_tokens_per_s": batch_size * prompt_len / p, "decode_tokens_per_s": batch_size * new_tokens / d,
                      "prefill_s": times[label]["prefill_s"], "decode_s": times[label]["decode_s"],
                      "prompt_len": prompt_len, "new_tokens": new_tokens, "batch_size": batch_size, "repeats": repeats}
    return out


# a speed figure goes into a model card only when every timed repeat lies within this fraction of its median
SPEED_TOLERANCE = 0.10
MIN_REPEATS = 3


def speed_spread(entry: dict[str, Any]) -> float | None:
    """The largest (max - min) / median over an entry's prefill and decode repeats; None with fewer than
    ``MIN_REPEATS`` repeats (too few to tell noise from signal)."""
    spreads = []
    for key in ("prefill_s", "decode_s"):
        xs = [float(x) for x in entry.get(key) or []]
        if len(xs) < MIN_REPEATS:
            return None
        med = statistics.median(xs)
        spreads.append((max(xs) - min(xs)) / med if med > 0 else float("inf"))
    return max(spreads)


def speed_verdict(speed: dict[str, Any], tolerance: float = SPEED_TOLERANCE) -> tuple[bool, str]:
    """``(ok, why)``: whether a speed measurement (:func:`measure_speed`'s result) is steady enough to publish --
    every model's repeats agree within ``tolerance`` of their median."""
    entries = {k: v for k, v in (speed or {}).items() if isinstance(v, dict)}
    if not entries:
        return False, "no speed was measured"
    worst, who = 0.0, None
    for label, entry in entries.items():
        spread = speed_spread(entry)
        if spread is None:
            return False, (f"left out: {label} was timed {len(entry.get('decode_s') or [])} time(s); at least "
                           f"{MIN_REPEATS} repeats are needed to tell a speed-up from noise")
        if spread > worst:
            worst, who = spread, label
    if worst > tolerance:
        return False, (f"left out: the timed repeats of {who} spread by {100 * worst:.0f} % of their median, more "
                       f"than the {100 * tolerance:.0f} % a published figure allows (a busy machine?); measure again "
                       "on an idle one")
    return True, f"repeats within {100 * worst:.0f} % of their median"
