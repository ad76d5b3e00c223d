"""``hf-streamline prune``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import FITNESSES, SUBLAYER_EXPORTS, UNIT_CHOICES
from .base import option
from .common import BaseModelArguments, CalibrationArguments, ModelArguments, OutputArguments


def _metric_help() -> str:
    from ..plugins import SCORERS

    return (f"metric that chooses the layers: {', '.join(sorted(SCORERS))} (default block_influence; sub-blocks: "
            "drop_cosine)")


@dataclass
class PruneArguments(OutputArguments, CalibrationArguments, BaseModelArguments, ModelArguments):
    """Score, choose and remove decoder layers (or their attention / MLP sub-blocks)."""

    command: ClassVar[str] = "prune"
    REQUIRED_ONE_OF: ClassVar[tuple[str, ...]] = ("target",)

    metric: str | None = option(deprecated=("--method",), help=_metric_help)
    remove: int | None = option(exclusive="target", help="number of layers to remove")
    ratio: float | None = option(exclusive="target", help="fraction of layers to remove, in (0, 1)")
    param_ratio: float | None = option(exclusive="target", help="fraction of parameters to remove, in (0, 1)")
    layers: str | None = option(exclusive="target",
                                help="explicit comma-separated layer indices to remove (no scoring)")
    block: bool = option(False, help="remove the best contiguous block instead of scattered layers")
    iterative: bool = option(False, help="re-score after every --step removals")
    step: int = option(1, help="layers removed per iterative step (default 1)")
    unit: str = option("layer", choices=UNIT_CHOICES,
                       help="what a removed unit is: a whole layer, its attention or MLP sub-block, or either "
                            "(sublayer); --remove counts units (default layer)")
    selection: str = option("scores", choices=("scores", "search"),
                            help="scores: one-shot scores (default); search: greedy + evolutionary search by measured "
                                 "damage")
    fitness: str = option("kl", choices=FITNESSES,
                          help="search: kl = KL(dense || pruned) of the next-token distributions on the calibration "
                               "(default); ppl = the pruned model's perplexity of the calibration text (BlockPruner's)")
    budget_evals: int | None = option(help="search: stop the evolution after this many layer evaluations (one layer "
                                           "on one sequence)")
    greedy_candidates: int | None = option(metavar="M",
                                           help="search: lazy greedy -- after the first step try only the M best units "
                                                "of the previous step (default: every unit at every step)")
    generations: int = option(40, help="search: evolution generations at most (0: greedy only)")
    offspring: int = option(8, help="search: offspring per generation (default 8)")
    search_top_k: int = option(128, help="search: dense logits kept per token for the KL (default 128; 0: the full "
                                         "vocabulary)")
    search_samples: int | None = option(metavar="N",
                                        help="search: the fitness uses N of the calibration sequences, evenly spread "
                                             "(default: all; --fold fits on all of them)")
    fold: str = option("none", choices=("none", "linear"),
                       help="linear: replace every contiguous run of the removed layers by a linear map fitted on the "
                            "calibration and folded into the layer before it (ReplaceMe; kept where it lowers "
                            "held-out perplexity); still a plain checkpoint (default none: plain removal)")
    export: str = option("streamline", choices=SUBLAYER_EXPORTS,
                         help="sub-blocks removed: streamline (a StreamlineForCausalLM folder that skips them: faster, "
                              "smaller KV cache) or zeroed (a plain checkpoint with their output projections zeroed)")
    protect_first: int = option(0, help="never remove the first N layers")
    protect_last: int = option(0, help="never remove the last N layers")
    all_tokens: bool = option(False, help="angular: average over all tokens instead of the last")
    eval_text: str | None = option(help="text file for perplexity before/after (default: the calibration)")
    ppl_tokens: int | None = option(deprecated=("--eval-tokens",),
                                    help="evaluate perplexity on at most this many tokens")
    plot: str | None = option(help="also write a PNG chart of the scores here (default: into the output)")
