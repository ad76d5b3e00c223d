"""Self-distillation data: heal on what the dense model itself writes (``heal --self-distill N``).

A pruned instruct model should keep its teacher's behaviour, not a web corpus's.  With ``self_distill`` = N the
dense teacher continues a prompt taken from every *training* example of the healing data by N tokens (greedy by
default, KV cache, batches left-padded by hand, each sequence stopped at its first EOS), and those continuations
become the training set:

- plain text: the prompt is the first ``self_distill_prompt_len`` tokens of each window; the new example is prompt +
  continuation, and only the generated tokens are targets (labels -100 on the prompt);
- instructions (Alpaca / chat): the prompt is the formatted prompt (every token before the response); the response
  is replaced by the teacher's, and only it is a target, as in the original data.

The validation split stays the original data, so validation measures something the student did not generate
itself (and best-checkpoint selection does not reward copying the teacher's quirks).  Generation is seeded and
deterministic: two runs with the same teacher, data and seed give the same examples.  Its cost (prompts, tokens
generated, wall time, tokens/s) is returned for the healing record.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..errors import StreamlineError
from .data import HealingData, InstructionExamples


def check_self_distill(config: Any, data: HealingData | None = None) -> None:
    """Refuse bad self-distillation options before any work."""
    n, p = config.self_distill, config.self_distill_prompt_len
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise StreamlineError("give the number of tokens to generate per prompt (>= 1)",
                              argument="config.self_distill", value=n)
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise StreamlineError("give a whole number of at least 1", argument="config.self_distill_prompt_len", value=p)
    b = config.self_distill_batch_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise StreamlineError("give a whole number of at least 1 (prompts generated together)",
                              argument="config.self_distill_batch_size", value=b)
    if config.self_distill_sample and not float(config.self_distill_temperature) > 0:
        raise StreamlineError("must be > 0", argument="config.self_distill_temperature",
                              value=config.self_distill_temperature)
    if data is not None and data.kind == "text" and p >= int(data.config.seq_len):
        raise StreamlineError(f"must be shorter than the data's seq_len {data.config.seq_len} (the prompt is the start "
                              "of each training window)", argument="config.self_distill_prompt_len", value=p)


def _stop_ids(tokenizer: Any, teacher: nn.Module) -> list[int]:
    """EOS ids: the tokenizer's and the teacher's generation config's (an instruct model may end turns with its own)."""
    ids: list[int] = []
    for v in (getattr(tokenizer, "eos_token_id", None),
              getattr(getattr(teacher, "generation_config", None), "eos_token_id", None)):
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def prompts_of(data: HealingData, prompt_len: int) -> list[list[int]]:
    """The prompt of every training example: the first ``prompt_len`` tokens of a text window, or every token
    before the response (the leading ``-100`` labels) of an instruction example."""
    out = []
    for i in range(len(data.train)):
        item = data.train[i]
        ids = item["input_ids"].tolist()
        if data.kind == "text":
            out.append(ids[:prompt_len])
        else:
            labels = item["labels"].tolist()
            n = next((j for j, lab in enumerate(labels) if lab != -100), len(labels))
            out.append(ids[:n])
    return out


def full_example_tokens(data: HealingData, config: Any) -> float:
    """Mean tokens of a self-distilled example if the teacher never stops early: its prompt + ``self_distill``
    (text: ``self_distill_prompt_len`` + N; instructions: the mean formatted prompt + N).  A token budget counts
    examples at this length before anything is generated."""
    n = int(config.self_distill)
    if data.kind == "text":  # check_self_distill keeps the prompt shorter than a window
        return float(int(config.self_distill_prompt_len) + n)
    prompts = prompts_of(data, int(config.self_distill_prompt_len))
    return sum(map(len, prompts)) / max(1, len(prompts)) + n


@torch.no_grad()
def generate_continuations(teacher: nn.Module, prompts: list[list[int]], new_tokens: int, *, pad_token_id: int,
                           eos_token_ids: list[int], batch_size: int = 8, sample: bool = False,
                           temperature: float = 1.0, seed: int = 0,
                           progress: bool = True) -> tuple[list[list[int]], dict[str, Any]]:
    """Continue every prompt (token ids) by at most ``new_tokens`` tokens with ``teacher.generate`` (KV cache),
    in batches of ``batch_size`` prompts of similar length, left-padded with ``pad_token_id``.  Each continuation
    ends at its first EOS (kept: the student learns to stop).  Returns the continuations in prompt order and the
    cost ``{prompts, generated_tokens, wall_time_s, tokens_per_s}``."""
    from ..log import progress_bar
    from transformers import GenerationConfig

    from ..utils import model_device

    device = model_device(teacher)
    was_training = teacher.training
    teacher.eval()
    gen_kw: dict[str, Any] = dict(max_new_tokens=int(new_tokens), min_new_tokens=0, do_sample=bool(sample),
                                  num_beams=1, use_cache=True, pad_token_id=int(pad_token_id),
                                  eos_token_id=list(eos_token_ids) or None)
    if sample:
        gen_kw.update(temperature=float(temperature), top_k=0, top_p=1.0)
    else:
        gen_kw.update(temperature=None, top_k=None, top_p=None)
    gen_config = GenerationConfig(**gen_kw)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch (stable)
    out: list[list[int]] = [[] for _ in prompts]
    stops = set(eos_token_ids)
    generated = 0
    bar = progress_bar(total=len(prompts), desc="self-distill: generating", unit="prompt", disable=not progress, leave=False)
    devices = [device] if device.type == "cuda" else []
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=devices):  # seeded, and the caller's RNG state is left as it was
            torch.manual_seed(seed)
            for start in range(0, len(order), max(1, int(batch_size))):
                idx = order[start:start + max(1, int(batch_size))]
                width = max(len(prompts[i]) for i in idx)
                ids = torch.full((len(idx), width), int(pad_token_id), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):  # LEFT padding: every prompt ends where generation starts
                    p = prompts[i]
                    if p:
                        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
                        mask[row, width - len(p):] = 1
                res = teacher.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=gen_config)
                new = res[:, width:].tolist()
                for row, i in enumerate(idx):
                    cont = new[row]
                    end = next((j for j, t in enumerate(cont) if t in stops), None)
                    cont = cont[:end + 1] if end is not None else cont
                    out[i] = cont
                    generated += len(cont)
                bar.update(len(idx))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    finally:
        bar.close()
        teacher.train(was_training)
    wall = time.perf_counter() - t0
    return out, {"prompts": len(prompts), "generated_tokens": generated, "wall_time_s": round(wall, 2),
                 "tokens_per_s": round(generated / wall, 1) if wall > 0 else None}


def self_distill_data(teacher: nn.Module, tokenizer: Any, data: HealingData, config: Any) -> tuple[HealingData,
                                                                                                 dict[str, Any]]:
    """``data`` with its training set replaced by the teacher's continuations of its prompts (see the module
    docstring); the validation split is the original one.  Returns ``(new data, record block)``."""
    check_self_distill(config, data)
    n, p = int(config.self_distill), int(config.self_distill_prompt_len)
    prompts = prompts_of(data, p)
    eos = _stop_ids(tokenizer, teacher)
    conts, cost = generate_continuations(teacher, prompts, n, pad_token_id=data.pad_token_id, eos_token_ids=eos,
                                         batch_size=int(config.self_distill_batch_size),
                                         sample=bool(config.self_distill_sample),
                                         temperature=float(config.self_distill_temperature), seed=int(config.seed),
                                         progress=bool(config.progress))
    examples = [{"input_ids": pr + c, "labels": [-100] * len(pr) + c} for pr, c in zip(prompts, conts) if c]
    if not examples:
        raise StreamlineError("the teacher ended every prompt at once (EOS first); nothing to train on",
                              argument="config.self_distill", value=n)
    train = InstructionExamples(examples, f"self-distill:{getattr(data.train, 'source', '')}")
    info = {"new_tokens_per_prompt": n, **cost, "batch_size": int(config.self_distill_batch_size),
            "greedy": not config.self_distill_sample}
    if data.kind == "text":
        info["prompt_len"] = p
    if config.self_distill_sample:
        info["temperature"] = float(config.self_distill_temperature)
    info["examples"] = len(examples)
    new_info = dict(data.info, self_distill=True)
    if "supervised_tokens" in new_info:
        new_info["supervised_tokens"] = sum(len(c) for c in conts)
    return replace(data, train=train, tokens_per_example=train.mean_tokens, info=new_info), info
