"""Layer and block importance scores: one metric per file, all in one registry (``SCORERS``).

``compute_scores`` runs every requested metric; the hook-based similarity metrics (``block_influence``,
``angular``, ``block_cosine``) share one forward pass over the calibration data.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..capture import collect_block_similarity
from ..errors import StreamlineError
from . import angular, block_cosine, block_influence, magnitude, perplexity, random_order, reverse_order, taylor  # noqa: F401 - registration
from .base import SCORERS, ScoreContext, ScoreResult, Scorer, get_scorer, register_scorer


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if not names:
        raise StreamlineError(f"no metric given; choose from {sorted(SCORERS)}")
    for name in names:
        get_scorer(name)
    return names


def compute_scores(model: Any, metrics: str | Sequence[str], calibration: Any = None, *, batch_size: int = 8,
                   block_sizes: Sequence[int] | None = None, seed: int = 0, progress: bool = True,
                   options: dict[str, Any] | None = None) -> dict[str, ScoreResult]:
    """Compute every metric in ``metrics`` on ``model``; returns {metric: ScoreResult}."""
    names = parse_metrics(metrics)
    scorers = [get_scorer(n) for n in names]
    need_data = [s.name for s in scorers if s.needs_calibration]
    if need_data and calibration is None:
        raise StreamlineError(f"metric(s) {need_data} need calibration data: pass it", argument="calibration")
    ctx = ScoreContext(model=model, calibration=calibration, batch_size=batch_size, seed=seed,
                       block_sizes=sorted(set(block_sizes or [])), progress=progress, options=dict(options or {}))
    if any(s.uses_similarity_pass for s in scorers):
        from ..utils import is_distributed, process_rank

        rank, world = process_rank() if is_distributed() else (0, 1)
        n_batches = (len(calibration) + batch_size - 1) // batch_size
        # under accelerate launch each process takes every world-th batch and the sums are added up afterwards
        mine = (b for i, b in enumerate(calibration.batches(batch_size)) if i % world == rank)
        stats = collect_block_similarity(model, mine, progress=progress and rank == 0,
                                         total=len(range(rank, n_batches, world)))
        ctx.shared["similarity"] = all_reduce_similarity(stats) if world > 1 else stats
    return {s.name: s.score(ctx) for s in scorers}


def all_reduce_similarity(stats: Any) -> Any:
    """Add up the similarity sums and counts of every process (data-parallel scoring); float64 sums, so the result
    equals one process's to rounding."""
    import torch

    from ..utils import all_reduce_sum

    for name in ("cos_sum", "ang_sum", "last_cos_sum", "last_ang_sum"):
        setattr(stats, name, all_reduce_sum(getattr(stats, name)))
    counts = all_reduce_sum(torch.tensor([stats.tokens, stats.samples], dtype=torch.float64))
    stats.tokens, stats.samples = int(counts[0]), int(counts[1])
    return stats


__all__ = ["SCORERS", "ScoreContext", "ScoreResult", "Scorer", "compute_scores", "get_scorer", "parse_metrics",
           "register_scorer"]
