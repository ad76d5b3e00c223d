"""LLM-Streamline's block selection (Chen et al., 2024): mean per-token cosine between block input and output.

High cosine = the block barely changes the residual stream = redundant.  All block sizes from one pass.
"""

from __future__ import annotations

from .base import ScoreContext, ScoreResult, Scorer, register_scorer


@register_scorer
class BlockCosine(Scorer):
    name = "block_cosine"
    citation = ("chen2024streamline", "cosine similarity of a block's input and output")
    paper_selection = "block"
    description = "mean cos(block input, block output) over tokens (LLM-Streamline); high = redundant"
    uses_similarity_pass = True
    higher_is_redundant = True

    def score(self, ctx: ScoreContext) -> ScoreResult:
        stats = ctx.shared["similarity"]
        cos = stats.mean_cos(last_token=False)
        sizes = sorted(set([1] + list(ctx.block_sizes or [])))
        per_block = {n: stats.block_values(cos, n) for n in sizes}
        return ScoreResult(self.name, per_layer=per_block[1], per_block=per_block, higher_is_redundant=True,
                           details={"tokens": stats.tokens})
