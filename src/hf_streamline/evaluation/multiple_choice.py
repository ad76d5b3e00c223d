"""Log-likelihood scoring of ``(context, continuation)`` requests, the way lm-eval-harness' ``HFLM`` does it.

Per request (``HFLM._encode_pair`` + ``_loglikelihood_tokens``):

1. trailing whitespace of the context moves to the front of the continuation;
2. ``context_enc = encode(context)``, ``whole = encode(context + continuation)``,
   ``continuation_enc = whole[len(context_enc):]`` (the tokenizer's own special-token default, like lm-eval's
   ``add_bos_token=None``); an empty context becomes the BOS (else EOS) token;
3. the input is ``(context_enc + continuation_enc)[-(max_length + 1):][:-1]``; the log-likelihood is the sum of the
   log-softmax (float32) of the continuation tokens, and ``is_greedy`` says whether every continuation token is the
   argmax.

Speed without changing the numbers beyond float noise:
- rows are sorted by length and **left**-padded (with explicit ``position_ids``), so the logits of every row's
  continuation sit in the last positions and only those go through the ``lm_head`` (``logits_to_keep``);
- **shared-prefix reuse**: the requests of one question that start with the same tokens (the query of a multiple-choice
  question, the sentence start of a WinoGrande pair) run that prefix once; its KV cache is repeated for each choice and
  only the rest is run.  ``prefix_reuse="auto"`` uses it when it saves at least a third of the tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..architecture import text_config
from ..errors import StreamlineError
from ..log import progress_bar
from ..utils import model_device
from .tasks import Item, Task, resolve_task, resolve_tasks

TOKENIZER_INFINITY = 1000000000000000019884624838656


@dataclass
class EncodedRequest:
    context: list[int]
    continuation: list[int]

    def input_and_target(self, max_length: int) -> tuple[list[int], int]:
        """Model input (truncated from the left) and the number of scored positions at its end."""
        full = (self.context + self.continuation)[-(max_length + 1):]
        return full[:-1], min(len(self.continuation), len(full) - 1)


@dataclass
class RequestResult:
    logprob: float
    is_greedy: bool
    num_tokens: int
    greedy_tokens: list[int] = field(default_factory=list)


def max_length_of(model: Any, tokenizer: Any, default: int = 2048) -> int:
    """The context length lm-eval's HFLM uses: the config's position limit, else the tokenizer's, else 2048."""
    cfg = text_config(model)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    v = getattr(tokenizer, "model_max_length", None)
    if isinstance(v, int) and 0 < v < TOKENIZER_INFINITY:
        return v
    return default


def prefix_token_id(tokenizer: Any) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise StreamlineError("the tokenizer has neither a BOS nor an EOS token; an empty context cannot be scored")


def encode_pair(tokenizer: Any, context: str, continuation: str) -> EncodedRequest:
    """lm-eval's ``_encode_pair`` for causal models (and its empty-context rule)."""
    if not context:
        return EncodedRequest([prefix_token_id(tokenizer)], list(tokenizer.encode(continuation)))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer.encode(context + continuation))
    ctx = list(tokenizer.encode(context))
    return EncodedRequest(ctx, whole[len(ctx):])


def _supports_logits_to_keep(model: Any) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _gather(logits: torch.Tensor, targets: list[int]) -> RequestResult:
    """``logits``: (n, V) for the n scored positions; ``targets``: the n continuation tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    tgt = torch.tensor(targets, device=logp.device)
    lp = logp.gather(-1, tgt[:, None])[:, 0]
    greedy = logp.argmax(-1)
    return RequestResult(float(lp.sum()), bool((greedy == tgt).all()), len(targets), greedy.tolist())


class LoglikelihoodScorer:
    """Scores groups of requests (one group per question) with one model; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, prefix_reuse: bool | str = "auto",
                 max_length: int | None = None, progress: bool = True, min_saving: float = 1 / 3):
        if batch_size < 1:
            raise StreamlineError(f"batch_size={batch_size}: must be at least 1")
        if prefix_reuse not in (True, False, "auto"):
            raise StreamlineError(f"prefix_reuse={prefix_reuse!r}: use True, False or 'auto'")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.max_length = max_length or max_length_of(model, tokenizer)
        self.progress = progress
        self.min_saving = min_saving
        self.device = model_device(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token_id(tokenizer)
        self._keep = _supports_logits_to_keep(model)

    # -- public ----------------------------------------------------------------------------------------------------
    def score_groups(self, groups: Sequence[Sequence[tuple[str, str]]], desc: str = "loglikelihood") -> list[list[RequestResult]]:
        """Results for every group, in order.  Under ``accelerate launch`` each process scores every world-th group
        and the results are gathered, so every process returns all of them."""
        import torch.distributed as dist

        from ..utils import is_distributed

        if not is_distributed() or dist.get_world_size() == 1:
            return self._score_groups(groups, desc)
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = list(range(rank, len(groups), world))
        part = self._score_groups([groups[i] for i in mine], desc) if mine else []
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, list(zip(mine, part)))
        out: list[Any] = [None] * len(groups)
        for pairs in gathered:
            for i, res in pairs:
                out[i] = res
        return out

    def _score_groups(self, groups: Sequence[Sequence[tuple[str, str]]], desc: str) -> list[list[RequestResult]]:
        encoded = [[encode_pair(self.tokenizer, c, x) for c, x in g] for g in groups]
        rows = [[r.input_and_target(self.max_length) for r in g] for g in encoded]
        targets = [[(r.context + r.continuation)[-n:] if n else [] for r, (_, n) in zip(ge, gr)]
                   for ge, gr in zip(encoded, rows)]
        out: list[list[RequestResult | None]] = [[None] * len(g) for g in groups]
        plain: list[tuple[int, int]] = []
        shared: list[tuple[int, int]] = []  # (group, prefix length)
        for gi, g in enumerate(rows):
            p = self._shared_prefix(g) if self.prefix_reuse and len(g) > 1 else 0
            total = sum(len(inp) for inp, _ in g)
            saving = (len(g) - 1) * p / max(total, 1)
            if p > 0 and (self.prefix_reuse is True or saving >= self.min_saving):
                shared.append((gi, p))
            else:
                plain.extend((gi, ri) for ri in range(len(g)))
        bar = progress_bar(total=sum(len(g) for g in groups), desc=desc, disable=not self.progress, leave=False)
        with torch.no_grad():
            self._run_plain(plain, rows, targets, out, bar)
            self._run_shared(shared, rows, targets, out, bar)
        bar.close()
        return out  # type: ignore[return-value]

    def score(self, requests: Sequence[tuple[str, str]]) -> list[RequestResult]:
        """Score independent requests (no prefix sharing between them)."""
        return [g[0] for g in self.score_groups([[r] for r in requests])]

    # -- internals -------------------------------------------------------------------------------------------------
    @staticmethod
    def _shared_prefix(g: list[tuple[list[int], int]]) -> int:
        """Longest common token prefix of the inputs, leaving >= 1 unscored token per row before its scored part."""
        first = g[0][0]
        p = min(len(inp) - n for inp, n in g) - 1  # the logit of the first scored token comes from the suffix pass
        for inp, _ in g[1:]:
            k = 0
            lim = min(p, len(inp))
            while k < lim and inp[k] == first[k]:
                k += 1
            p = k
        return max(p, 0)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, keep: int = 0, past: Any = None):
        kwargs: dict[str, Any] = dict(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      position_ids=pos.to(self.device), use_cache=past is not None or keep < 0)
        if past is not None:
            kwargs["past_key_values"] = past
        if self._keep and keep > 0:
            kwargs["logits_to_keep"] = keep
        return self.model(**kwargs)

    def _run_plain(self, plain, rows, targets, out, bar) -> None:
        order = sorted(plain, key=lambda t: -len(rows[t[0]][t[1]][0]))
        for b in range(0, len(order), self.batch_size):
            batch = order[b:b + self.batch_size]
            width = max(len(rows[g][r][0]) for g, r in batch)
            keep = max(rows[g][r][1] for g, r in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, (g, r) in enumerate(batch):
                inp = rows[g][r][0]
                ids[j, width - len(inp):] = torch.tensor(inp)
                mask[j, width - len(inp):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self._forward(ids, mask, pos, keep=keep).logits
            k = logits.shape[1]
            for j, (g, r) in enumerate(batch):
                n = rows[g][r][1]
                out[g][r] = _gather(logits[j, k - n:], targets[g][r])
            bar.update(len(batch))

    def _run_shared(self, shared, rows, targets, out, bar) -> None:
        order = sorted(shared, key=lambda t: -t[1])
        for b in range(0, len(order), self.batch_size):
            batch = order[b:b + self.batch_size]
            # 1. the shared prefixes, left-padded, once per question
            pw = max(p for _, p in batch)
            ids = torch.full((len(batch), pw), self.pad_id, dtype=torch.long)
            pmask = torch.zeros((len(batch), pw), dtype=torch.long)
            for j, (g, p) in enumerate(batch):
                ids[j, pw - p:] = torch.tensor(rows[g][0][0][:p])
                pmask[j, pw - p:] = 1
            ppos = (pmask.cumsum(-1) - 1).clamp(min=0)
            past = self.model(input_ids=ids.to(self.device), attention_mask=pmask.to(self.device),
                              position_ids=ppos.to(self.device), use_cache=True,
                              **({"logits_to_keep": 1} if self._keep else {})).past_key_values
            # 2. repeat each prefix's cache once per request, then run the rest of every request (right-padded)
            rep = [j for j, (g, _) in enumerate(batch) for _ in rows[g]]
            past.reorder_cache(torch.tensor(rep, device=self.device))
            suffixes = [(g, r, p, rows[g][r][0][p:]) for g, p in batch for r in range(len(rows[g]))]
            sw = max(len(s) for *_, s in suffixes)
            sids = torch.full((len(suffixes), sw), self.pad_id, dtype=torch.long)
            smask = torch.zeros((len(suffixes), sw), dtype=torch.long)
            spos = torch.zeros((len(suffixes), sw), dtype=torch.long)
            for j, (g, r, p, s) in enumerate(suffixes):
                sids[j, :len(s)] = torch.tensor(s)
                smask[j, :len(s)] = 1
                spos[j] = p + torch.arange(sw)
            mask = torch.cat([pmask[rep], smask], dim=1)
            logits = self.model(input_ids=sids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=spos.to(self.device), past_key_values=past, use_cache=True).logits
            for j, (g, r, p, s) in enumerate(suffixes):
                n = rows[g][r][1]
                out[g][r] = _gather(logits[j, len(s) - n:len(s)], targets[g][r])
            del past
            bar.update(len(suffixes))


# ---------------------------------------------------------------------------------------------------------------------
# task metrics


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean with the sample standard deviation (n - 1), as lm-eval's ``mean_stderr``."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


@dataclass
class TaskResult:
    """Accuracy of one model on one task, with every item's per-request log-likelihoods kept for later analysis."""

    task: str
    kind: str
    n: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    indices: list[int]
    gold: list[int]
    loglikelihoods: list[list[float]]
    num_tokens: list[list[int]]
    norm_lengths: list[list[int]]
    pred: list[Any]  # chosen option (argmax of acc); for last_word the greedy tokens of the continuation
    pred_norm: list[int]
    correct: list[int]
    correct_norm: list[int]
    perplexity: float | None = None  # last_word: exp(-sum ll / number of items) as lm-eval's "perplexity"
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        d = {"acc": self.acc, "acc_stderr": self.acc_stderr, "acc_norm": self.acc_norm,
             "acc_norm_stderr": self.acc_norm_stderr, "n": self.n, "kind": self.kind}
        if self.perplexity is not None:
            d["perplexity"] = self.perplexity
        return d

    def samples(self) -> list[dict[str, Any]]:
        return [{"index": i, "gold": g, "loglikelihoods": ll, "num_tokens": nt, "pred": p, "pred_norm": pn, "acc": c,
                 "acc_norm": cn}
                for i, g, ll, nt, p, pn, c, cn in zip(self.indices, self.gold, self.loglikelihoods, self.num_tokens,
                                                       self.pred, self.pred_norm, self.correct, self.correct_norm)]

    def option_perplexities(self) -> list[list[float]]:
        """Per-option perplexity exp(-ll / tokens) of every item (the input of LLM-Streamline's stability weights)."""
        return [[math.exp(-ll / max(n, 1)) for ll, n in zip(lls, nts)]
                for lls, nts in zip(self.loglikelihoods, self.num_tokens)]


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def task_result(task: Task, results: list[list[RequestResult]], indices: list[int]) -> TaskResult:
    kind = task.spec.kind
    gold, lls, nts, lens, pred, pred_norm, correct, correct_norm = [], [], [], [], [], [], [], []
    for item, res in zip(task.items, results):
        ll = [r.logprob for r in res]
        gold.append(item.gold)
        lls.append(ll)
        nts.append([r.num_tokens for r in res])
        lens.append(list(item.norm_lengths))
        if kind == "last_word":
            ok = int(res[0].is_greedy)
            pred.append(res[0].greedy_tokens)
            pred_norm.append(0)
            correct.append(ok)
            correct_norm.append(ok)
            continue
        p = _argmax(ll)
        pn = _argmax([v / n for v, n in zip(ll, item.norm_lengths)])
        pred.append(p)
        pred_norm.append(pn)
        correct.append(int(p == item.gold))
        correct_norm.append(int(pn == item.gold))
    n = len(correct)
    if n == 0:
        raise StreamlineError(f"task {task.name!r} has no items; an empty task cannot be evaluated")
    ppl = None
    if kind == "last_word":
        ppl = math.exp(-sum(l[0] for l in lls) / n)
    return TaskResult(task.name, kind, n, sum(correct) / n, mean_stderr(correct), sum(correct_norm) / n,
                      mean_stderr(correct_norm), indices, gold, lls, nts, lens, pred, pred_norm, correct, correct_norm,
                      ppl, task.source)


def evaluate_task(model: Any, tokenizer: Any, task: Any, limit: int | float | None = None, seed: int | None = None,
                  batch_size: int = 8,
                  prefix_reuse: bool | str = "auto", task_dir: str | None = None, progress: bool = True,
                  scorer: LoglikelihoodScorer | None = None) -> TaskResult:
    """Zero-shot accuracy of ``model`` on one task (a name, a file, a TaskSpec or a Task) on the items ``limit`` and
    ``seed`` select (the first ``limit``, or a fraction below 1, as lm-eval; with ``seed`` a seeded sample)."""
    task = resolve_task(task, task_dir)
    if len(task) == 0:
        raise StreamlineError(f"task {task.name!r} has no items; an empty task cannot be evaluated")
    sub = task.select(limit, seed)
    scorer = scorer or LoglikelihoodScorer(model, tokenizer, batch_size=batch_size, prefix_reuse=prefix_reuse,
                                           progress=progress)
    groups = [list(zip(it.contexts, it.continuations)) for it in sub.items]
    results = scorer.score_groups(groups, desc=task.name)
    return task_result(sub, results, [it.index for it in sub.items])


def evaluate_tasks(model: Any, tokenizer: Any, tasks: Sequence[Any] | str, limit: int | float | None = None,
                   seed: int | None = None, batch_size: int = 8, prefix_reuse: bool | str = "auto",
                   task_dir: str | None = None, progress: bool = True,
                   include_path: str | None = None) -> dict[str, TaskResult]:
    """Evaluate several tasks (names -- comma-separated, lm-eval task / group names when lm-eval is installed --,
    files, task configs or Tasks); returns ``{task name: TaskResult}`` (in the given order)."""
    loaded = resolve_tasks(tasks, task_dir, include_path) if tasks else []
    if not loaded:
        raise StreamlineError("no tasks given; pass task names or .jsonl files")
    gen = [t.name for t in loaded if t.generative]
    if gen:
        raise StreamlineError(f"task(s) {gen} are lm-eval generate_until tasks: evaluate them with evaluate_models / "
                              "`hf-streamline evaluate` (lm-eval generates and scores them)")
    scorer = LoglikelihoodScorer(model, tokenizer, batch_size=batch_size, prefix_reuse=prefix_reuse, progress=progress)
    return {t.name: evaluate_task(model, tokenizer, t, limit=limit, seed=seed, scorer=scorer) for t in loaded}


def item_requests(item: Item) -> list[tuple[str, str]]:
    return list(zip(item.contexts, item.continuations))
