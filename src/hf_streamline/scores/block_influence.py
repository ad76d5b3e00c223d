"""ShortGPT's Block Influence (Men et al., 2024): BI_l = 1 - mean cos(layer input, layer output) over tokens."""

from __future__ import annotations

from .base import ScoreContext, ScoreResult, Scorer, register_scorer


@register_scorer
class BlockInfluence(Scorer):
    name = "block_influence"
    citation = ("men2024shortgpt", "Block Influence layer score")
    description = "1 - cos(input, output) per layer, mean over non-pad tokens (ShortGPT); low = redundant"
    uses_similarity_pass = True

    def score(self, ctx: ScoreContext) -> ScoreResult:
        stats = ctx.shared["similarity"]
        cos = stats.mean_cos(last_token=False)
        per_layer = [1.0 - float(cos[l, l]) for l in range(stats.num_layers)]
        per_block = {n: [1.0 - v for v in stats.block_values(cos, n)] for n in (ctx.block_sizes or [])}
        return ScoreResult(self.name, per_layer=per_layer, per_block=per_block,
                           details={"tokens": stats.tokens, "samples": stats.samples})
