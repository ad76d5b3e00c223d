"""SLM window search: merge runs of similar consecutive layers from the top down.

The algorithm (SLM paper; its released code, with the two deviations noted below)::

    top = L - 2                      # the last layer is never merged
    bottom = top - 1
    while bottom >= 0:
        s = similarity(original model, model with [bottom..top] merged into bottom, earlier merges kept)
        score = s (scoring="cumulative", the paper)  or  s / s_current (scoring="marginal")
        if score > threshold: remember [bottom..top] as good; bottom -= 1      # grow the window downward
        else: commit the last good window (if any); top = bottom; bottom = top - 1
    commit the last good window (if any)

Deviations from the released code, both deliberate: (1) a good window still open when ``bottom`` runs below 0 is
committed (the released loop ends without merging it); (2) after a commit the next trial is ``[top-1, top]`` directly
(the released code first re-measures the committed model with a one-layer "window", which always passes).

``s_current`` is the similarity of the model with the windows committed so far (1 before the first commit).  With
the paper's cumulative scoring one global threshold on the similarity to the original model judges the first
windows (at the top, with nothing merged yet) far more leniently than the last: to reach K layers the threshold must
sit below the similarity of the final, fully merged model, so the first trials -- the top layers -- pass whatever
they cost.  Marginal scoring thresholds each window's own cost; with ``similarity="logits_kl"`` (exp(-KL)) the score
is exp(-(KL_trial - KL_current)), the KL the window adds.

Target mode (``remove=K`` / ``ratio=R``) bisects the threshold in [0, 1] for the highest threshold whose search
removes at least K layers; every search stops as soon as it reaches K (the window that reaches K is committed at
once), so the result removes exactly K.  The search at threshold t decides every trial exactly as the search at
``lo`` does for all t below the smallest accepted similarity s* of the search at ``lo``; so a bisection step jumps to
at least s*, and the bisection ends, exactly, once s* >= hi: every threshold in [lo, s*) gives the same windows.
The reported threshold is the middle of that interval (reusable in threshold mode), the interval is reported too.

The number of layers the greedy search removes is *not* monotone in the threshold in general: a higher threshold
ends a window earlier, and the windows below are then judged against a less-merged model, which can let them grow
further.  On trained models we measured it monotone (docs/merging.md); on tiny random models it is not.  Target mode
does not rely on monotonicity (the bisection keeps "removes >= K at lo" as its invariant, and the cap makes it exact).

Efficient search
----------------
- No deep copy per trial: the bottom layer of the window gets the merged parameters in place (``copy_`` into the
  existing tensors) and the layers above it in the window are swapped for pass-through stand-ins; both are restored
  after the trial (bit-identical: the bottom layer's parameters are snapshotted once and copied back).
- The layers below the window are never re-run: one pass of the original model per calibration batch records every
  decoder layer's input (hooks) and the final output.  A trial runs the model's *own* forward (so the causal mask,
  sliding-window masks, rotary embeddings and any per-layer-type inputs are built exactly as the model builds them,
  for any architecture) with the layers below the window replaced by pass-through stand-ins and the recorded
  input injected into the window's bottom layer by a forward pre-hook.  Only the layers from the window up run.
- Trials are memoised on (committed windows, window), so the bisection of target mode re-uses the common prefix of
  its searches.
- Forward layer-evaluations (one decoder layer on one sequence) are counted with pre-hooks and reported next to what
  the naive search (deep-copy + full forward per trial, the released code) spends on the same trials.

Memory: the recorded layer inputs are ``L x N x T x hidden`` values (N calibration sequences of T tokens) in the
model's dtype, plus the final outputs ``N x T x hidden``.  Use ``reuse_hidden=False`` to keep only the final outputs
(every trial then runs the whole model, still without copying it).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..architecture import (PassThroughLayer, check_causal_lm, get_decoder_layers, layer_input_hidden, num_layers)
from ..capture import LayerHooks, base_forward_module, inject_layer_input
from ..errors import StreamlineError
from ..log import progress_bar
from ..operations import MergeOp
from ..plan import StreamlinePlan, base_config_record
from ..utils import model_device, versions
from .base import get_merge_rule, merged_parameters, snapshot_parameters, write_parameters
from .operation import merge_layers
from ..options import SCORINGS, MergeConfig  # noqa: F401 - declared with the other options, torch-free
from .similarity import OUTPUT_SIMILARITIES, get_output_similarity, output_head, skip_first_positions


@dataclass
class SearchRun:
    """One pass of the window search at one threshold."""

    threshold: float
    cap: int | None
    windows: list[dict[str, Any]] = field(default_factory=list)  # {"layers", "similarity", "score"}, top-down
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(len(w["layers"]) - 1 for w in self.windows)


@dataclass
class MergeResult:
    """The outcome of a window search (the model itself is left unchanged by the search)."""

    windows: list[dict[str, Any]]
    threshold: float
    mode: str  # "threshold" | "target"
    rule: str
    similarity: str
    num_layers_before: int
    target: int | None = None
    threshold_interval: list[float] | None = None  # target mode: every threshold in [lo, hi) gives these windows
    bisection: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    evaluations: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    similarity_options: dict[str, Any] = field(default_factory=dict)  # skip_first_tokens, kl_topk (logits_kl)
    scoring: str = "marginal"

    @property
    def removed_layers(self) -> list[int]:
        return sorted(i for w in self.windows for i in w["layers"][1:])

    @property
    def final_similarity(self) -> float | None:
        """Similarity of the fully merged model (the last committed window was measured with all others in place)."""
        return self.windows[-1]["similarity"] if self.windows else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["removed_layers"] = self.removed_layers
        d["final_similarity"] = self.final_similarity
        return d


class WindowSearch:
    """Runs SLM searches on one model and one set of calibration batches (trials memoised across runs)."""

    def __init__(self, model: nn.Module, batches: list[dict[str, torch.Tensor]], rule: str = "drop",
                 similarity: str = "token_cosine", reuse_hidden: bool = True, naive: bool = False,
                 max_gram_tokens: int = 1024, progress: bool = True, skip_first_tokens: int | None = None,
                 kl_topk: int = 256, scoring: str = "marginal"):
        check_causal_lm(model)
        get_merge_rule(rule)
        from ..offload import is_offloaded

        if is_offloaded(model) and (rule != "drop" or naive):
            why = ("the model is loaded layer by layer (sequential), and every trial of this search writes merged "
                   "weights into its window, which that loading does not keep; use rule 'drop' (the default) without "
                   "the naive search, or load the model whole")
            if rule != "drop":
                raise StreamlineError(why, argument="config.rule", value=rule)
            raise StreamlineError(why, argument="config.naive")
        if similarity not in OUTPUT_SIMILARITIES:
            raise StreamlineError(f"unknown; choose from {sorted(OUTPUT_SIMILARITIES)}", argument="config.similarity",
                                  value=similarity)
        if not batches:
            raise StreamlineError("the window search needs calibration data: pass it", argument="calibration")
        if scoring not in SCORINGS:
            raise StreamlineError(f"unknown; choose from {list(SCORINGS)}", argument="config.scoring", value=scoring)
        self.model, self.batches, self.rule, self.similarity_name = model, batches, rule, similarity
        self.scoring = scoring
        self.reuse, self.naive, self.progress = bool(reuse_hidden) and not naive, bool(naive), progress
        sim_cls = OUTPUT_SIMILARITIES[similarity]
        if skip_first_tokens is not None and int(skip_first_tokens) < 0:
            raise StreamlineError("must be >= 0", argument="config.skip_first_tokens", value=skip_first_tokens)
        self.skip_first_tokens = int(sim_cls.default_skip_first_tokens if skip_first_tokens is None
                                     else skip_first_tokens)
        self.sim_cache: dict[Any, Any] = {}  # per-batch values a criterion computes once (logits_kl: teacher top-K)
        self.sim_kwargs = {"max_gram_tokens": max_gram_tokens, "kl_topk": kl_topk, "cache": self.sim_cache}
        self.similarity_options: dict[str, Any] = {"skip_first_tokens": self.skip_first_tokens}
        if sim_cls.needs_logits:
            self.sim_kwargs["head"] = output_head(model)
            self.similarity_options["kl_topk"] = int(kl_topk or 0)
        self.L = num_layers(model)
        if self.L < 3:
            raise StreamlineError(f"merging needs at least 3 decoder layers (the last is never merged); this model has {self.L}")
        self.body = base_forward_module(model)
        self.device = model_device(model)
        self.layers = get_decoder_layers(model)
        self.originals = list(self.layers)
        self._pass = [PassThroughLayer(m) for m in self.originals]
        self.rows = [int(b["input_ids"].shape[0]) for b in batches]
        self.N = sum(self.rows)
        self.memo: dict[Any, tuple[float | None, str | None]] = {}
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.counts = {"reference": 0, "trials": 0, "naive_trials": 0, "trials_run": 0, "trials_memoised": 0}
        self._evals = 0
        self.refs: list[torch.Tensor] = []
        self.inputs: list[list[torch.Tensor]] | None = None

    # -- model state ---------------------------------------------------------------------------------------------
    def _install(self, skip: set[int]) -> None:
        for i in range(self.L):
            want = self._pass[i] if i in skip else self.originals[i]
            if self.layers[i] is not want:
                self.layers[i] = want

    def _write_bottom(self, bottom: int, values: dict[str, torch.Tensor]) -> None:
        if bottom not in self.snapshots:
            self.snapshots[bottom] = snapshot_parameters(self.originals[bottom])
        write_parameters(self.originals[bottom], values)

    def _restore_bottom(self, bottom: int) -> None:
        if bottom in self.snapshots:
            write_parameters(self.originals[bottom], self.snapshots[bottom])

    def restore(self) -> None:
        """Put the model back exactly as it was (original modules in every slot, original parameter values)."""
        for bottom in list(self.snapshots):
            self._restore_bottom(bottom)
        self.snapshots.clear()
        self._install(set())

    # -- forwards --------------------------------------------------------------------------------------------------
    def _count_hook(self, module, args, kwargs):
        self._evals += int(layer_input_hidden(args, kwargs).shape[0])

    def _run_body(self, b: int, model: nn.Module | None = None) -> torch.Tensor:
        batch = self.batches[b]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        body = self.body if model is None else base_forward_module(model)
        out = body(input_ids=batch["input_ids"].to(self.device), attention_mask=mask.to(self.device), use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden

    def prepare(self) -> None:
        """One pass of the original model per batch: final outputs, and (``reuse_hidden``) every layer's input."""
        self.refs = []
        self.sim_cache.clear()
        self.inputs = [[] for _ in range(self.L)] if self.reuse else None

        def on_input(i: int, hidden: torch.Tensor) -> None:
            if self.inputs is not None:
                self.inputs[i].append(hidden.detach().clone())

        with LayerHooks(self.model, on_input=on_input if self.reuse else None):
            for b in progress_bar(range(len(self.batches)), desc="merge: reference pass", disable=not self.progress,
                          leave=False):
                self.refs.append(self._run_body(b).detach().clone())
        self.counts["reference"] = self.L * self.N

    @torch.no_grad()
    def _measure(self, start: int, model: nn.Module | None = None) -> float:
        sim = get_output_similarity(self.similarity_name, **self.sim_kwargs)
        for b in range(len(self.batches)):
            handle = None
            if model is None and start > 0:
                handle = inject_layer_input(self.originals[start], self.inputs[start][b])
            try:
                out = self._run_body(b, model)
            finally:
                if handle is not None:
                    handle.remove()
            mask = self.batches[b].get("attention_mask")
            if mask is None:
                mask = torch.ones_like(self.batches[b]["input_ids"])
            sim.add(out, self.refs[b], skip_first_positions(mask, self.skip_first_tokens), b)
        return float(sim.value())

    # -- one trial -------------------------------------------------------------------------------------------------
    def trial(self, committed: list[tuple[int, int]], bottom: int, top: int,
              naive_model: nn.Module | None = None) -> tuple[float | None, str | None]:
        window = list(range(bottom, top + 1))
        layers_after = self.L - sum(m - l for l, m in committed) - (top - bottom)
        self.counts["naive_trials"] += layers_after * self.N
        if self.naive:
            trial_model = copy.deepcopy(naive_model)
            try:
                merge_layers(trial_model, [window], self.rule)
            except StreamlineError as exc:
                return None, str(exc)
            self.counts["trials"] += num_layers(trial_model) * self.N
            self.counts["trials_run"] += 1
            sim = self._measure(0, trial_model)
            del trial_model
            return sim, None
        key = (tuple(committed), bottom, top)
        if key in self.memo:
            self.counts["trials_memoised"] += 1
            return self.memo[key]
        try:
            values = merged_parameters([self.originals[i] for i in window], self.rule, labels=window)
        except StreamlineError as exc:
            self.memo[key] = (None, str(exc))
            return self.memo[key]
        skip = {i for l, m in committed for i in range(l + 1, m + 1)} | set(range(bottom + 1, top + 1))
        if self.reuse:
            skip |= set(range(bottom))
        self._write_bottom(bottom, values)
        self._install(skip)
        before = self._evals
        try:
            sim = self._measure(bottom if self.reuse else 0)
        finally:
            self._restore_bottom(bottom)
            self.snapshots.pop(bottom, None)
            self._install({i for l, m in committed for i in range(l + 1, m + 1)})
        self.counts["trials"] += self._evals - before
        self.counts["trials_run"] += 1
        self.memo[key] = (sim, None)
        return self.memo[key]

    def _commit(self, committed: list[tuple[int, int]], bottom: int, top: int, naive_model: nn.Module | None) -> None:
        committed.append((bottom, top))
        window = list(range(bottom, top + 1))
        if self.naive:
            merge_layers(naive_model, [window], self.rule)
            return
        self._write_bottom(bottom, merged_parameters([self.originals[i] for i in window], self.rule, labels=window))
        self._install({i for l, m in committed for i in range(l + 1, m + 1)})

    # -- one search ------------------------------------------------------------------------------------------------
    def score(self, sim: float | None, current: float) -> float | None:
        """What the threshold judges: the similarity itself (cumulative), or ``sim / current`` (marginal), where
        ``current`` is the similarity of the model with the windows committed so far (a collapsed model, current
        <= 0, accepts no further window)."""
        if sim is None or self.scoring == "cumulative":
            return sim
        return sim / current if current > 0 else 0.0

    @torch.no_grad()
    def run(self, threshold: float, cap: int | None = None) -> SearchRun:
        record = SearchRun(threshold=float(threshold), cap=cap)
        committed: list[tuple[int, int]] = []
        sims: dict[tuple[int, int], float] = {}
        naive_model = copy.deepcopy(self.model) if self.naive else None
        hooks = [] if self.naive else [m.register_forward_pre_hook(self._count_hook, with_kwargs=True)
                                       for m in self.originals]
        removed = 0
        top, bottom = self.L - 2, self.L - 3
        good: tuple[int, float, float] | None = None
        current = 1.0  # similarity of the model with the windows committed so far
        bar = progress_bar(total=self.L - 2, desc=f"merge search (t={threshold:.4f})", disable=not self.progress, leave=False)
        try:
            while bottom >= 0:
                if cap is not None and removed >= cap:
                    break
                sim, reason = self.trial(committed, bottom, top, naive_model)
                score = self.score(sim, current)
                ok = score is not None and score > threshold
                record.trials.append({"layers": [bottom, top], "similarity": sim, "score": score, "accepted": ok,
                                      **({"reason": reason} if reason else {})})
                bar.update(1)
                if ok:
                    good = (bottom, sim, score)
                    if cap is not None and removed + (top - bottom) >= cap:
                        break
                    bottom -= 1
                    continue
                if good is not None:
                    self._commit(committed, good[0], top, naive_model)
                    sims[(good[0], top)] = good[1:]
                    current = good[1]
                    removed += top - good[0]
                    good = None
                top, bottom = bottom, bottom - 1
            if good is not None:
                self._commit(committed, good[0], top, naive_model)
                sims[(good[0], top)] = good[1:]
        finally:
            bar.close()
            for h in hooks:
                h.remove()
            self.restore()
        record.windows = [{"layers": list(range(l, m + 1)), "similarity": sims[(l, m)][0], "score": sims[(l, m)][1]}
                          for l, m in committed]
        return record


    # -- target mode -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def target(self, target: int, tolerance: float = 1e-4, asked: tuple[str, Any] | None = None
               ) -> tuple[SearchRun, float, list[float], list[dict[str, Any]]]:
        """Bisect the threshold for exactly ``target`` merged layers: ``(final run, threshold, interval, steps)``.

        Call :meth:`prepare` first.  Several targets on one :class:`WindowSearch` share the memoised trials.
        ``asked``: the argument (name, value) that asked for ``target``, named in the error when it cannot be met.
        """
        # Every search of the bisection stops as soon as it reaches the target (cap): only "removes >= K" matters,
        # and the capped search is a prefix of the uncapped one, so it answers that question at a fraction of
        # the cost.  A search at threshold t decides every trial as the search at lo does for all t below s*
        # (the smallest accepted similarity of the search at lo), so each step jumps at least to s*, and the
        # bisection ends exactly when s* >= hi.
        bisection: list[dict[str, Any]] = []
        floor = self.run(0.0, cap=target)
        bisection.append({"threshold": 0.0, "removed": floor.removed})
        if floor.removed < target:
            raise StreamlineError(
                f"the search cannot merge away {target} layers with rule {self.rule!r}: even at the lowest "
                f"threshold (similarity > 0) it merges {floor.removed} (windows "
                f"{[w['layers'] for w in floor.windows]}). Ask for {floor.removed} or fewer, or try another "
                "config.rule / config.similarity.", argument=asked[0] if asked else "target",
                value=asked[1] if asked else target
            )
        lo, hi, lo_run = 0.0, 1.0, floor
        s_star = _next_flip(lo_run, lo)
        while s_star < hi and hi - lo > tolerance:
            t = max(0.5 * (lo + hi), s_star)
            r = self.run(t, cap=target)
            bisection.append({"threshold": t, "removed": r.removed})
            if r.removed >= target:
                lo, lo_run = t, r
                s_star = _next_flip(lo_run, lo)
            else:
                hi = t
        threshold = 0.5 * (lo + min(s_star, hi))
        interval = [lo, min(s_star, hi)]
        final = self.run(threshold, cap=target)
        if final.removed != target:  # pragma: no cover - guarded by the floor check above
            raise StreamlineError(f"the search reached {final.removed} merged layers, not the {target} asked for")
        return final, threshold, interval, bisection


def _next_flip(run: SearchRun, threshold: float) -> float:
    """The smallest score above ``threshold`` among the accepted trials of ``run`` (1.0 if none)."""
    sims = [t["score"] for t in run.trials if t["accepted"] and t["score"] > threshold]
    return min(sims) if sims else 1.0


def _as_batches(calibration: Any, batch_size: int) -> list[dict[str, torch.Tensor]]:
    if calibration is None:
        raise StreamlineError("the window search needs calibration data: pass it", argument="calibration")
    if hasattr(calibration, "batches"):
        return list(calibration.batches(batch_size))
    if isinstance(calibration, torch.Tensor):
        ids = calibration if calibration.dim() == 2 else calibration.unsqueeze(0)
        return [{"input_ids": ids[i:i + batch_size], "attention_mask": torch.ones_like(ids[i:i + batch_size])}
                for i in range(0, ids.shape[0], batch_size)]
    return list(calibration)


@torch.no_grad()
def search_merge_windows(model: nn.Module, calibration: Any, config: MergeConfig | None = None,
                         **overrides: Any) -> MergeResult:
    """Find the windows to merge; ``model`` is left bit-identical.  ``calibration``: CalibrationData, an (N, T) id
    tensor, or an iterable of ``{"input_ids", "attention_mask"}`` batches."""
    config = copy.deepcopy(config) if config is not None else MergeConfig()
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise StreamlineError(f"unknown merge option {k!r}")
        setattr(config, k, v)
    L = num_layers(model)
    target = config.target_count(L)
    batches = _as_batches(calibration, config.batch_size)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    search = WindowSearch(model, batches, rule=config.rule, similarity=config.similarity,
                          reuse_hidden=config.reuse_hidden, naive=config.naive,
                          max_gram_tokens=config.max_gram_tokens, progress=config.progress,
                          skip_first_tokens=config.skip_first_tokens, kl_topk=config.kl_topk,
                          scoring=config.scoring)
    bisection: list[dict[str, Any]] = []
    try:
        search.prepare()
        if target is None:
            final = search.run(float(config.threshold))
            threshold, mode = float(config.threshold), "threshold"
            interval = None
        else:
            mode = "target"
            asked = ("config.ratio", config.ratio) if config.ratio is not None else ("config.remove", config.remove)
            final, threshold, interval, bisection = search.target(target, config.tolerance, asked)
    finally:
        search.restore()
        model.train(was_training)
    counts = dict(search.counts)
    counts["total"] = counts["reference"] + counts["trials"]
    counts["naive_total"] = counts["reference"] + counts["naive_trials"]
    counts["unit"] = "decoder-layer forward evaluations of one calibration sequence"
    counts["mode"] = "naive (deep copy + full forward per trial)" if config.naive else (
        "efficient (in-place swap, recorded layer inputs)" if config.reuse_hidden else "in-place swap, full forwards")
    counts["ratio_vs_naive"] = counts["total"] / counts["naive_total"] if counts["naive_total"] else None
    return MergeResult(windows=final.windows, threshold=threshold, mode=mode, rule=config.rule,
                       similarity=config.similarity, num_layers_before=L, target=target, bisection=bisection,
                       threshold_interval=interval,
                       trials=final.trials, evaluations=counts, wall_seconds=time.perf_counter() - t0,
                       similarity_options=search.similarity_options, scoring=config.scoring)


def merge_plan(result: MergeResult, base_model: str, calibration: Any = None) -> StreamlinePlan:
    """The plan that reproduces the merge: one ``merge`` operation per window (original indices), top-down."""
    plan = StreamlinePlan(base_model=base_model, num_layers_before=result.num_layers_before, method="merge",
                          metric=result.similarity, selection="sliding_window",
                          calibration=calibration.recipe() if hasattr(calibration, "recipe") else None,
                          versions=versions())
    plan.operations = [MergeOp(layers=list(w["layers"]), rule=result.rule) for w in result.windows]
    plan.extra["merge"] = {
        "rule": result.rule, "similarity": result.similarity, "similarity_options": result.similarity_options,
        "scoring": result.scoring,
        "mode": result.mode, "threshold": result.threshold,
        "target": result.target, "threshold_interval": result.threshold_interval,
        "windows": result.windows, "final_similarity": result.final_similarity,
        "bisection": result.bisection, "evaluations": result.evaluations, "trials": result.trials,
        "search_seconds": round(result.wall_seconds, 3),
    }
    return plan


def slm_merge(model: nn.Module, calibration: Any, config: MergeConfig | None = None, base_model: str | None = None,
              **overrides: Any) -> tuple[nn.Module, StreamlinePlan]:
    """Search the windows, merge them into ``model`` (in place) and return ``(model, plan)``."""
    result = search_merge_windows(model, calibration, config, **overrides)
    name = base_model or getattr(model.config, "_name_or_path", "") or "unknown"
    plan = merge_plan(result, name, calibration)
    plan.base_config = base_config_record(model)  # before the merge changes the model
    if not result.windows:
        warnings.warn(f"no window passed the threshold {result.threshold}: nothing was merged", stacklevel=2)
    else:
        merge_layers(model, [w["layers"] for w in result.windows], result.rule)
    return model, plan
