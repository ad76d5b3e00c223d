"""Layer merging (LaCo / SLM): merge rules, the sliding-window search, and CKA layer-similarity maps.

Importing this package registers the plan operation ``merge`` (so :func:`hf_streamline.plan.apply_plan` can replay
merge plans) and the merge rules ``rdsc``, ``top_weights``, ``average`` and ``drop``.
"""

from .base import MERGE_RULES, MergeRule, get_merge_rule, merged_parameters, parameter_kinds, register_merge_rule
from . import average, drop, rdsc, top_weights  # noqa: F401  (register the rules)
from .cka import (CKAAccumulator, SimilarityMap, cka, hsic_unbiased, hsic_unbiased_direct, layer_similarity,
                  plot_similarity_map)
from .operation import merge_layers, validate_windows
from .search import MergeConfig, MergeResult, WindowSearch, merge_plan, search_merge_windows, slm_merge
from .similarity import OUTPUT_SIMILARITIES

__all__ = [
    "CKAAccumulator", "MERGE_RULES", "MergeConfig", "MergeResult", "MergeRule", "OUTPUT_SIMILARITIES",
    "SimilarityMap", "WindowSearch", "cka", "get_merge_rule", "hsic_unbiased", "hsic_unbiased_direct",
    "layer_similarity", "merge_layers", "merge_plan", "merged_parameters", "parameter_kinds", "plot_similarity_map",
    "register_merge_rule", "search_merge_windows", "slm_merge", "validate_windows",
]
