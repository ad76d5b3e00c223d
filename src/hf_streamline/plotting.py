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
                      highlight: Sequence[int] = ()) -> str:
    """One bar chart per metric (per-layer values), removed/selected layers highlighted."""
    plt = _plt()
    metrics = [m for m, s in scores.items() if getattr(s, "per_layer", None) is not None]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 0.32 * len(scores[metrics[0]].per_layer) + 2),
                                                     2.6 * len(metrics) + 0.6), squeeze=False)
    hl = set(highlight)
    for ax, m in zip(axes[:, 0], metrics):
        s = scores[m]
        vals = s.per_layer
        colors = ["#d62728" if i in hl else "#1f77b4" for i in range(len(vals))]
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels([str(i) for i in range(len(vals))], fontsize=7)
        arrow = "high = redundant" if s.higher_is_redundant else "low = redundant"
        ax.set_ylabel(m, fontsize=9)
        ax.set_title(f"{m} ({arrow})", fontsize=9, loc="left")
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("decoder layer" + ("  (red: selected for removal)" if hl else ""))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    from .utils import atomic_output_file

    with atomic_output_file(path) as tmp:  # whole or absent
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return str(path)
