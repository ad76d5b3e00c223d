"""Angular distance (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper Layers").

d(l, n) = arccos(cos(x_l, x_{l+n})) / pi between the input of layer l and the output of layer l+n-1, at the last
non-pad token of each sample (the paper) or averaged over all tokens (``all_tokens=True``).  All n from one pass.
"""

from __future__ import annotations

from .base import ScoreContext, ScoreResult, Scorer, register_scorer


@register_scorer
class AngularDistance(Scorer):
    name = "angular"
    citation = ("gromov2024unreasonable", "angular distance between a block's input and output")
    paper_selection = "block"
    description = "arccos(cos(block input, block output))/pi, last token (Gromov et al.); low = redundant"
    uses_similarity_pass = True

    def score(self, ctx: ScoreContext) -> ScoreResult:
        stats = ctx.shared["similarity"]
        all_tokens = bool(ctx.options.get("all_tokens", False))
        ang = stats.mean_angular(last_token=not all_tokens)
        sizes = sorted(set([1] + list(ctx.block_sizes or [])))
        per_block = {n: stats.block_values(ang, n) for n in sizes}
        return ScoreResult(self.name, per_layer=per_block[1], per_block=per_block,
                           details={"token": "all" if all_tokens else "last", "samples": stats.samples})
