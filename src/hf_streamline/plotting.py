"""Pictures: readable PNG charts (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import os
from typing import Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_scores(scores: dict, path: str | os.PathLike, title: str = "Layer importance",
                      highlight: Sequence[int] = (), highlight_by_metric: dict | None = None) -> str:
    """One bar chart per metric (per-layer values), removed/selected layers highlighted (``highlight_by_metric``:
    other layers for some metrics, e.g. the layers whose attention went in the attention chart)."""
    plt = _plt()
    metrics = [m for m, s in scores.items() if getattr(s, "per_layer", None) is not None]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 0.32 * len(scores[metrics[0]].per_layer) + 2),
                                                     2.6 * len(metrics) + 0.6), squeeze=False)
    hl = set(highlight)
    for ax, m in zip(axes[:, 0], metrics):
        s = scores[m]
        vals = s.per_layer
        marked = set((highlight_by_metric or {}).get(m, hl))
        colors = ["#d62728" if i in marked else "#1f77b4" for i in range(len(vals))]
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels([str(i) for i in range(len(vals))], fontsize=7)
        arrow = "high = redundant" if s.higher_is_redundant else "low = redundant"
        ax.set_ylabel(m, fontsize=9)
        ax.set_title(f"{m} ({arrow})", fontsize=9, loc="left")
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("decoder layer" + ("  (red: selected for removal)" if hl or highlight_by_metric else ""))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    from .utils import atomic_output_file

    with atomic_output_file(path) as tmp:  # whole or absent
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return str(path)


def plot_unit_search(units: Sequence[str], num_layers: int, path: str | os.PathLike, search: dict | None = None,
                     title: str = "Removed units") -> str:
    """Which units went (a layers x {attention, MLP} grid, removed in red) and, for a search, its fitness: the
    greedy steps and the evolution's best so far."""
    plt = _plt()
    from .sublayers import Unit

    parsed = [Unit.parse(u) for u in units]
    grid = [[0] * num_layers for _ in range(2)]
    for u in parsed:
        for row, kind in enumerate(("attention", "mlp")):
            if u.kind in ("layer", kind):
                grid[row][u.layer] = 1
    panels = 2 if search else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(6, 0.3 * num_layers + 2), 1.8 + 2.6 * (panels - 1) + 0.6),
                             squeeze=False)
    ax = axes[0, 0]
    from matplotlib.colors import ListedColormap

    ax.imshow(grid, aspect="auto", cmap=ListedColormap(["#dbe9f6", "#d62728"]), vmin=0, vmax=1)
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["attention", "MLP"], fontsize=8)
    ax.set_xticks(range(num_layers))
    ax.set_xticklabels([str(i) for i in range(num_layers)], fontsize=7)
    ax.set_xlabel("decoder layer (red: removed)", fontsize=8)
    ax.set_title(f"{len(parsed)} units removed", fontsize=9, loc="left")
    if search:
        ax = axes[1, 0]
        greedy = [s["fitness"] for s in search.get("greedy", {}).get("steps", [])]
        ax.plot(range(1, len(greedy) + 1), greedy, marker="o", label="greedy: after each removal")
        hist = search.get("evolution_history") or []
        if hist:
            xs = [len(greedy) + h["generation"] for h in hist]
            ax.plot(xs, [h["fitness"] for h in hist], marker=".", label="evolution: best so far")
        ax.set_xlabel("greedy step, then evolution generation", fontsize=8)
        ax.set_ylabel(f"{search.get('fitness', 'kl')} (nats/token)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    from .utils import atomic_output_file

    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return str(path)
