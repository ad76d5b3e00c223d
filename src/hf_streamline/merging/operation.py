"""Merging windows of consecutive layers into their bottom layer, and the plan operation ``merge``.

A window ``[l, ..., m]`` (consecutive, ascending) is merged into layer ``l``: ``l``'s parameters are replaced in place
by the rule's merge of the window, and layers ``l+1..m`` are removed with
:func:`hf_streamline.architecture.keep_only_layers` (config sliced, layers renumbered), so the result stays a plain
checkpoint of the base architecture.  The bottom layer keeps its own slot attributes (attention type, sliding window).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..architecture import get_decoder_layers, keep_only_layers, num_layers
from ..errors import StreamlineError
from ..offload import onload
from ..plan import block_positions, register_operation
from .base import get_merge_rule, merged_parameters, write_parameters


def validate_windows(windows: Sequence[Sequence[int]], L: int) -> list[list[int]]:
    """Check windows (current indices): each >= 2 consecutive ascending layers in range, pairwise disjoint."""
    out: list[list[int]] = []
    seen: set[int] = set()
    for w in windows:
        w = [int(i) for i in w]
        if len(w) < 2:
            raise StreamlineError(f"merge window {w} has fewer than 2 layers")
        if w != list(range(w[0], w[0] + len(w))):
            raise StreamlineError(f"merge window {w} is not a run of consecutive ascending layer indices")
        if w[0] < 0 or w[-1] >= L:
            raise StreamlineError(f"merge window {w} is out of range for a model with {L} layers (0..{L - 1})")
        if seen & set(w):
            raise StreamlineError(f"merge window {w} overlaps another window ({sorted(seen & set(w))})")
        seen |= set(w)
        out.append(w)
    return out


def merge_layers(model: nn.Module, windows: Sequence[Sequence[int]], rule: str = "top_weights") -> nn.Module:
    """Merge each window (current layer indices, consecutive) into its bottom layer, in place; returns ``model``."""
    get_merge_rule(rule)
    L = num_layers(model)
    windows = validate_windows(windows, L)
    layers = get_decoder_layers(model)
    for w in windows:  # --sequential: the merged layers' weights are read and written
        for i in w:
            onload(layers[i])
    merged = [(w[0], merged_parameters([layers[i] for i in w], rule, labels=w)) for w in windows]
    for bottom, values in merged:  # all merges computed first: windows are disjoint, so order does not matter
        write_parameters(layers[bottom], values)
    gone = {i for w in windows for i in w[1:]}
    keep_only_layers(model, [i for i in range(L) if i not in gone])
    return model


@register_operation("merge")
def _apply_merge(model: Any, op: dict, state: dict, **_: Any) -> Any:
    """Plan operation ``{"type": "merge", "layers": [l, ..., m], "rule": name}`` (original indices)."""
    current: list[int] = state["current"]
    layers = [int(i) for i in op["layers"]]
    positions = block_positions(state, layers, "merges", adjacent="consecutive")
    merge_layers(model, [positions], op.get("rule", "top_weights"))
    state["current"] = [o for o in current if o not in set(layers[1:])]
    return model
