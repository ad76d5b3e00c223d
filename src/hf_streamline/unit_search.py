"""Choose the units to remove by the damage they do together: KL(dense || pruned) of the next-token distributions.

One-shot per-unit scores assume removal errors add up; they do not (EvoPress, arXiv 2410.14649; BlockPruner, SLEB).
This search measures the pruned model itself:

1. **Greedy** (SLEB / BlockPruner style): remove the unit whose removal raises the KL least, re-measure with it
   removed, repeat until the budget (a unit count or a fraction of the parameters) is reached.
2. **Evolutionary refinement** (EvoPress-style (1+λ)): from the greedy solution, each generation makes λ offspring by
   *level-switch* mutations (a removed unit comes back and a kept one goes; one swap, or more with probability 1/2
   each), evaluates them, and keeps the best if it beats the parent.  The budget stays satisfied by construction.

Fitness (``fitness``), lower is better:

- ``kl`` (default): the mean over calibration tokens of KL(p_dense || p_pruned), the dense distribution taken from its
  top-k logits (``top_k``; ``None`` keeps the full vocabulary; with k = vocabulary size both are the same KL), the
  pruned one over the full vocabulary (as in :func:`~hf_streamline.training.objectives.lm.kl_to_teacher_topk`).
- ``ppl``: the pruned model's mean next-token negative log-likelihood of the calibration text (log perplexity), the
  fitness of BlockPruner (arXiv 2406.10594); it needs no dense pass and keeps no dense logits. It rewards what the
  text rewards, where ``kl`` asks for the dense model's whole distribution (including its mistakes).

Cost: a candidate differs from its parent from some layer ``s`` upward, so only the layers from ``s`` up run: one pass
of the parent model records every decoder layer's input (hooks), and a trial runs the model's own forward (masks,
rotary embeddings, per-layer-type inputs exactly as the model builds them) with the layers below ``s`` passed through
and the recorded input injected into slot ``s``.  Layer evaluations (one decoder layer on one sequence) are counted
and reported; ``budget_evals`` bounds them (the greedy pass always finishes; the evolution stops at the bound).

Memory: the recorded inputs are ``L x N x T x hidden`` values plus ``N x T x k`` teacher logits.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .architecture import PassThroughLayer, check_causal_lm, get_decoder_layers, layer_input_hidden
from .capture import LayerHooks, inject_layer_input
from .errors import StreamlineError
from .log import progress_bar
from .options import FITNESSES
from .sublayers import (SUB_KINDS, Unit, _skipped, _sub_name, candidate_units, check_units, normalise_units,
                        unit_parameter_count)
from .utils import model_device


@dataclass
class SearchConfig:
    """How the search runs (the budget itself is given to :func:`search_units`)."""

    fitness: str = field(default="kl", metadata={"help": "kl: mean KL(dense || pruned) per calibration token; ppl: the pruned model's mean next-token NLL of the calibration text (log perplexity, BlockPruner's); lower is better."})
    top_k: int | None = field(default=128, metadata={"help": "Dense logits kept per token for the KL (None: the full vocabulary)."})
    evolve: bool = field(default=True, metadata={"help": "Refine the greedy solution with (1+λ) level-switch evolution."})
    generations: int = field(default=40, metadata={"help": "Evolution: generations at most."})
    offspring: int = field(default=8, metadata={"help": "Evolution: offspring per generation (λ)."})
    budget_evals: int | None = field(default=None, metadata={"help": "Stop the evolution after this many layer evaluations (one decoder layer on one sequence)."})
    seed: int = field(default=0, metadata={"help": "Seed of the mutations."})
    greedy_candidates: int | None = field(default=None, metadata={"help": "Lazy greedy: after the first step, try only this many units, the best of the previous step's ranking (None: every unit at every step, exact greedy)."})
    batch_size: int = field(default=8, metadata={"help": "Calibration sequences per forward pass."})
    samples: int | None = field(default=None, metadata={"help": "The fitness uses N of the calibration sequences, evenly spread (None: all); all of them serve what follows the search (e.g. a linear fold)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar with the best fitness so far."})

    def __post_init__(self) -> None:
        if self.fitness not in FITNESSES:
            raise StreamlineError(f"unknown; use one of {', '.join(FITNESSES)}", argument="search.fitness",
                                  value=self.fitness)
        if self.top_k is not None and int(self.top_k) < 1:
            raise StreamlineError("keep at least one logit per token", argument="search.top_k", value=self.top_k)
        if self.greedy_candidates is not None and int(self.greedy_candidates) < 1:
            raise StreamlineError("must be >= 1 (leave it out for exact greedy)", argument="search.greedy_candidates",
                                  value=self.greedy_candidates)
        if self.samples is not None and int(self.samples) < 1:
            raise StreamlineError("must be >= 1 (leave it out for every calibration sequence)",
                                  argument="search.samples", value=self.samples)
        for name in ("generations", "offspring", "batch_size"):
            if int(getattr(self, name)) < (0 if name == "generations" else 1):
                raise StreamlineError(f"must be >= {0 if name == 'generations' else 1}", argument=f"search.{name}",
                                      value=getattr(self, name))
        if self.budget_evals is not None and int(self.budget_evals) < 1:
            raise StreamlineError("must be >= 1", argument="search.budget_evals", value=self.budget_evals)


class UnitSearch:
    """Evaluates sets of removed units on one model and one set of calibration batches; the model is left as it was."""

    def __init__(self, model: nn.Module, batches: list[dict[str, torch.Tensor]], candidates: Sequence[Unit],
                 config: SearchConfig | None = None):
        check_causal_lm(model)
        if not batches:
            raise StreamlineError("the search needs calibration data: pass it", argument="calibration")
        self.model, self.batches, self.config = model, batches, config or SearchConfig()
        self.candidates = sorted(set(candidates))
        for u in self.candidates:  # range and separability (each candidate alone is a valid removal)
            check_units(model, [u])
        if not self.candidates:
            raise StreamlineError("the search has no candidate units")
        self.device = model_device(model)
        self.layers = get_decoder_layers(model)
        self.originals = list(self.layers)
        self.L = len(self.originals)
        self._pass = [PassThroughLayer(m) for m in self.originals]
        self.subs: dict[tuple[int, str], tuple[str, nn.Module, nn.Module]] = {}
        for u in self.candidates:
            if u.kind in SUB_KINDS:
                layer = self.originals[u.layer]
                name = _sub_name(layer, u.kind)
                self.subs[(u.layer, u.kind)] = (name, getattr(layer, name), _skipped(u.kind))
        self.params = {u: unit_parameter_count(self.originals[u.layer], u.kind) for u in self.candidates}
        self.evaluations = 0
        self.trials = 0
        self.memo: dict[frozenset, float] = {}
        self.teacher: list[tuple[torch.Tensor, ...]] = []
        self._count_handles = [m.register_forward_pre_hook(self._count, with_kwargs=True) for m in self.originals]

    # -- model state ---------------------------------------------------------------------------------------------
    def _count(self, module, args, kwargs):
        self.evaluations += int(layer_input_hidden(args, kwargs).shape[0])

    def _install(self, removed: frozenset, below: int = 0) -> None:
        for i in range(self.L):
            want = self._pass[i] if i < below or Unit(i) in removed else self.originals[i]
            if self.layers[i] is not want:
                self.layers[i] = want
        for (i, kind), (name, original, skipped) in self.subs.items():
            want = skipped if Unit(i, kind) in removed else original
            if getattr(self.originals[i], name) is not want:
                setattr(self.originals[i], name, want)

    def close(self) -> None:
        """Put every module back and remove the counting hooks."""
        self._install(frozenset())
        for h in self._count_handles:
            h.remove()
        self._count_handles = []

    # -- forwards --------------------------------------------------------------------------------------------------
    def _logits(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batches[b]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        out = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=mask.to(self.device),
                         use_cache=False)
        return out.logits.float(), mask.to(self.device)

    def _damage(self, logits: torch.Tensor, mask: torch.Tensor, b: int) -> tuple[float, int]:
        """The fitness summed over batch ``b``'s scored tokens, and their count."""
        if self.config.fitness == "ppl":
            target = self.batches[b]["input_ids"].to(logits.device)[:, 1:]
            keep = (mask[:, 1:] * mask[:, :-1]).bool()  # a real token predicted from a real token
            nll = torch.nn.functional.cross_entropy(logits[:, :-1][keep], target[keep], reduction="sum")
            return float(nll), int(keep.sum())
        from .training.objectives.lm import kl_to_teacher, kl_to_teacher_topk

        t = self.teacher[b]
        kl = kl_to_teacher(logits, t[0], mask) if len(t) == 1 else kl_to_teacher_topk(logits, t[0], t[1], mask)
        n = int(mask.sum())
        return float(kl) * n, n

    @torch.no_grad()
    def prepare(self) -> None:
        """The dense model's reference distributions (top-k logits, or all of them); nothing for ``ppl``."""
        self._install(frozenset())
        self.teacher = []
        if self.config.fitness == "ppl":
            return
        k = self.config.top_k
        for b in progress_bar(range(len(self.batches)), desc="search: dense pass", disable=not self.config.progress,
                      leave=False):
            logits, _ = self._logits(b)
            if k is None or k >= logits.shape[-1]:
                self.teacher.append((logits.cpu(),))
            else:
                top = logits.topk(int(k), dim=-1)
                self.teacher.append((top.values.cpu(), top.indices.cpu()))

    @torch.no_grad()
    def record(self, removed: frozenset) -> tuple[float, list[list[torch.Tensor]]]:
        """Fitness of ``removed`` from a full pass, and every decoder layer's input under it (for its trials)."""
        inputs: list[list[torch.Tensor]] = [[] for _ in range(self.L)]
        self._install(removed)
        total, count = 0.0, 0
        with LayerHooks(self.model, on_input=lambda i, h: inputs[i].append(h.detach().clone())):
            for b in range(len(self.batches)):
                damage, n = self._damage(*self._logits(b), b)
                total, count = total + damage, count + n
        self._install(frozenset())
        fit = total / max(count, 1)
        self.memo[removed] = fit
        return fit, inputs

    @torch.no_grad()
    def fitness(self, removed: frozenset, start: int = 0, inputs: list[list[torch.Tensor]] | None = None) -> float:
        """Fitness of ``removed``; with ``inputs`` (recorded under a set that equals ``removed`` below layer
        ``start``) only the layers from ``start`` up run."""
        if removed in self.memo:
            return self.memo[removed]
        self.trials += 1
        start = start if inputs is not None else 0
        self._install(removed, below=start)
        total, count = 0.0, 0
        try:
            for b in range(len(self.batches)):
                handle = None
                if start > 0:
                    handle = inject_layer_input(self.layers[start], inputs[start][b])
                try:
                    damage, n = self._damage(*self._logits(b), b)
                finally:
                    if handle is not None:
                        handle.remove()
                total, count = total + damage, count + n
        finally:
            self._install(frozenset())
        fit = total / max(count, 1)
        self.memo[removed] = fit
        return fit

    # -- budgets ---------------------------------------------------------------------------------------------------
    def removed_params(self, removed: Iterable[Unit]) -> int:
        return sum(self.params[u] for u in removed)

    def _valid(self, removed: frozenset) -> bool:
        """At least one layer stays (a layer whose two sub-blocks both go is gone)."""
        return sum(1 for u in normalise_units(removed) if u.kind == "layer") < self.L

    # -- the search ------------------------------------------------------------------------------------------------
    def greedy(self, count: int | None = None, params: int | None = None,
               bar: Any = None) -> tuple[frozenset, list[dict[str, Any]]]:
        """Remove one unit at a time (the one that raises the fitness least) until ``count`` units or ``params``
        parameters are gone.  With ``greedy_candidates`` M (lazy greedy), every step after the first tries only the M
        units that ranked best at the previous step (the others keep their earlier order)."""
        removed: frozenset = frozenset()
        steps: list[dict[str, Any]] = []
        ranking: list[Unit] = list(self.candidates)
        lazy = self.config.greedy_candidates

        def reached() -> bool:
            return len(removed) >= count if count is not None else self.removed_params(removed) >= params

        while not reached():
            _, inputs = self.record(removed)
            best, best_fit = None, None
            pool = [u for u in ranking if u not in removed and self._valid(removed | {u})]
            tried = pool[:int(lazy)] if lazy and steps else pool
            fits: dict[Unit, float] = {}
            for u in sorted(tried):  # in layer order, as the exact search: ties go to the lower unit
                f = fits[u] = self.fitness(removed | {u}, u.layer, inputs)
                if best_fit is None or f < best_fit:
                    best, best_fit = u, f
                if bar is not None:
                    bar.update(1)
            ranking = sorted(tried, key=lambda u: fits[u]) + [u for u in ranking if u not in fits]
            if best is None:
                raise StreamlineError("the search cannot remove more units: every candidate is gone or would remove "
                                      "the last layer")
            removed = removed | {best}
            steps.append({"unit": str(best), "fitness": best_fit, "evaluations": self.evaluations})
            if bar is not None:
                bar.set_postfix(best=f"{best_fit:.4f}", units=len(removed))
            del inputs
        return removed, steps

    def _mutate(self, parent: frozenset, rng: random.Random, params: int | None) -> frozenset | None:
        outside = [u for u in self.candidates if u not in parent]
        if not parent or not outside:
            return None
        for _ in range(20):
            swaps = 1
            while swaps < min(len(parent), len(outside)) and rng.random() < 0.5:
                swaps += 1
            back = rng.sample(sorted(parent), swaps)
            go = rng.sample(outside, swaps)
            child = (parent - set(back)) | set(go)
            if not self._valid(child) or (params is not None and self.removed_params(child) < params):
                continue
            return child
        return None

    def evolve(self, parent: frozenset, parent_fit: float, params: int | None = None,
               bar: Any = None) -> tuple[frozenset, float, list[dict[str, Any]]]:
        cfg = self.config
        rng = random.Random(cfg.seed)
        history: list[dict[str, Any]] = []
        _, inputs = self.record(parent)
        for gen in range(int(cfg.generations)):
            if cfg.budget_evals is not None and self.evaluations >= int(cfg.budget_evals):
                break
            best, best_fit = None, None
            for _ in range(int(cfg.offspring)):
                child = self._mutate(parent, rng, params)
                if child is None:
                    continue
                start = min(u.layer for u in child ^ parent)
                f = self.fitness(child, start, inputs)
                if best_fit is None or f < best_fit:
                    best, best_fit = child, f
            improved = best is not None and best_fit < parent_fit
            if improved:
                parent, parent_fit = best, best_fit
                _, inputs = self.record(parent)
            history.append({"generation": gen + 1, "fitness": parent_fit, "improved": improved,
                            "evaluations": self.evaluations})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{parent_fit:.4f}")
        return parent, parent_fit, history


def _batches(calibration: Any, batch_size: int, samples: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The search's batches: every calibration sequence, or ``samples`` of them -- evenly spread over a
    :class:`~hf_streamline.CalibrationData` (its windows are in text order), the first ones of a list of batches."""
    if calibration is None:
        raise StreamlineError("the search needs calibration data: pass it", argument="calibration")
    if isinstance(calibration, list):
        batches = calibration
    else:
        n = len(calibration)
        if samples is not None and int(samples) < n:
            from .calibration import CalibrationData

            idx = torch.linspace(0, n - 1, int(samples)).round().long()
            calibration = CalibrationData(calibration.input_ids[idx], calibration.attention_mask[idx],
                                          calibration.config)
        batches = list(calibration.batches(batch_size))
    if samples is None:
        return batches
    out, left = [], int(samples)
    for b in batches:
        if left <= 0:
            break
        n = int(b["input_ids"].shape[0])
        out.append(b if n <= left else {k: v[:left] for k, v in b.items()})
        left -= n
    if left > 0:
        raise StreamlineError(f"the calibration has only {samples - left} sequences; give more calibration samples or "
                              "fewer search samples", argument="search.samples", value=samples)
    return out


def search_units(model: nn.Module, calibration: Any, unit: str = "layer", count: int | None = None,
                 param_ratio: float | None = None, config: SearchConfig | None = None,
                 candidates: Sequence[Unit] | None = None) -> tuple[list[Unit], dict[str, Any]]:
    """Choose units of kind ``unit`` to remove (``count`` of them, or at least ``param_ratio`` of the model's
    parameters) by measured damage (``config.fitness``).  The model is left unchanged.  Returns ``(units, record)``; the record goes
    into the plan (fitness, candidates, trials, layer evaluations, seed, greedy steps, evolution history)."""
    config = config or SearchConfig()
    if (count is None) == (param_ratio is None):
        raise StreamlineError("give exactly one search budget: count (units) or param_ratio", argument="count")
    cands = list(candidates) if candidates is not None else candidate_units(len(get_decoder_layers(model)), unit)
    t0 = time.perf_counter()
    search = UnitSearch(model, _batches(calibration, config.batch_size, config.samples), cands, config)
    params = None
    if param_ratio is not None:
        if not 0.0 < float(param_ratio) < 1.0:
            raise StreamlineError("must be strictly between 0 and 1", argument="param_ratio", value=param_ratio)
        params = int(float(param_ratio) * sum(p.numel() for p in model.parameters()))
        if search.removed_params(search.candidates) < params:
            raise StreamlineError(f"the candidate units hold only {search.removed_params(search.candidates)} of the "
                                  f"{params} parameters asked for", argument="param_ratio", value=param_ratio)
    elif not 1 <= int(count) < len(search.candidates):
        raise StreamlineError(f"choose between 1 and {len(search.candidates) - 1} of the {len(search.candidates)} {unit} "
                              "units", argument="count", value=count)
    try:
        search.prepare()
        lazy = config.greedy_candidates
        steps_total = None
        if count is not None:
            n = len(search.candidates)
            steps_total = n + sum(min(int(lazy), n - i) if lazy else n - i for i in range(1, int(count)))
        with progress_bar(total=steps_total, desc=f"search ({unit}): greedy", disable=not config.progress) as bar:
            removed, steps = search.greedy(count=count, params=params, bar=bar)
        greedy_fit = steps[-1]["fitness"]
        greedy_evals = search.evaluations
        fit, history = greedy_fit, []
        if config.evolve and config.generations > 0:
            with progress_bar(total=int(config.generations), desc=f"search ({unit}): evolution",
                      disable=not config.progress) as bar:
                removed, fit, history = search.evolve(removed, greedy_fit, params=params, bar=bar)
    finally:
        search.close()
    units = sorted(removed)
    record = {"fitness": config.fitness, "top_k": config.top_k if config.fitness == "kl" else None, "unit": unit,
              "budget": {"units": count} if count is not None else {"param_ratio": param_ratio},
              "candidates": len(search.candidates), "trials": search.trials, "layer_evaluations": search.evaluations,
              "greedy": {"steps": steps, "fitness": greedy_fit, "layer_evaluations": greedy_evals,
                         "units": sorted(st["unit"] for st in steps)},
              "evolution_history": history,
              "evolution": {"generations": len(history), "offspring": config.offspring,
                            "improvements": sum(1 for h in history if h["improved"]), "fitness": fit,
                            "seed": config.seed, "budget_evals": config.budget_evals},
              "best_fitness": fit, "units": [str(u) for u in units],
              "removed_parameters": search.removed_params(units),
              "calibration_tokens": int(sum(int(b["attention_mask"].sum()) if "attention_mask" in b
                                            else b["input_ids"].numel() for b in search.batches)),
              "seconds": round(time.perf_counter() - t0, 2), "config": asdict(config)}
    return units, record


def exhaustive_best(model: nn.Module, calibration: Any, candidates: Sequence[Unit], count: int,
                    config: SearchConfig | None = None) -> tuple[list[Unit], float]:
    """The best set of ``count`` candidates by full enumeration (small models only: for checking the search)."""
    config = config or SearchConfig(progress=False)
    search = UnitSearch(model, _batches(calibration, config.batch_size), candidates, config)
    try:
        search.prepare()
        best, best_fit = None, None
        for combo in itertools.combinations(search.candidates, count):
            s = frozenset(combo)
            if not search._valid(s):
                continue
            f = search.fitness(s)
            if best_fit is None or f < best_fit:
                best, best_fit = s, f
    finally:
        search.close()
    return sorted(best), best_fit


__all__ = ["FITNESSES", "SearchConfig", "UnitSearch", "exhaustive_best", "search_units"]
