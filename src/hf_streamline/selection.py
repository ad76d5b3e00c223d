"""Which layers go: the k least important, the best contiguous block, targets as layers / fractions / parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .errors import StreamlineError
from .scores.base import ScoreResult


@dataclass
class Target:
    """How much to remove: exactly one of ``layers`` (a count), ``ratio`` (of layers) or ``param_ratio`` (of
    decoder-layer parameters... of all parameters, see ``resolve``)."""

    layers: int | None = None
    ratio: float | None = None
    param_ratio: float | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.layers, self.ratio, self.param_ratio) if x is not None]
        if len(given) != 1:
            raise StreamlineError("give exactly one of layers (a count), ratio or param_ratio", argument="target")
        for name in ("ratio", "param_ratio"):
            v = getattr(self, name)
            if v is not None and not (0.0 < float(v) < 1.0):
                raise StreamlineError("must be strictly between 0 and 1", argument=f"target.{name}", value=v)

    def to_dict(self) -> dict:
        return {k: v for k, v in {"layers": self.layers, "ratio": self.ratio, "param_ratio": self.param_ratio}.items()
                if v is not None}


def check_count(k: int, num_layers: int, protected: int = 0) -> int:
    if k < 1:
        raise StreamlineError("remove at least one layer", argument="target.layers", value=k)
    if k >= num_layers:
        raise StreamlineError(f"the model has {num_layers} layers and at least one must stay", argument="target.layers",
                              value=k)
    if k > num_layers - protected:
        raise StreamlineError(f"only {num_layers - protected} of {num_layers} layers are not protected (protect_first / "
                              "protect_last)", argument="target.layers", value=k)
    return k


def layers_for_target(target: Target, layer_params: Sequence[int], total_params: int | None = None) -> int | None:
    """Number of layers the target asks for (``None`` for parameter targets, resolved during selection)."""
    L = len(layer_params)
    if target.layers is not None:
        return int(target.layers)
    if target.ratio is not None:
        return max(1, int(round(target.ratio * L)))
    return None


def target_layer_count(target: Target, layer_params: Sequence[int], total_params: int) -> int:
    """Layers the target asks for; a parameter fraction becomes the fewest (smallest) layers that hold it."""
    n = layers_for_target(target, layer_params, total_params)
    if n is not None:
        return n
    need = target.param_ratio * total_params
    n, acc = 0, 0
    for p in sorted(layer_params):
        if acc >= need:
            break
        acc += p
        n += 1
    return n


def protected_set(num_layers: int, protect_first: int = 0, protect_last: int = 0) -> set[int]:
    if protect_first < 0 or protect_last < 0:
        bad = "protect_first" if protect_first < 0 else "protect_last"
        raise StreamlineError("must be >= 0", argument=bad, value=protect_first if bad == "protect_first" else protect_last)
    return set(range(min(protect_first, num_layers))) | set(range(max(0, num_layers - protect_last), num_layers))


def select_least_important(scores: ScoreResult, target: Target, layer_params: Sequence[int], total_params: int,
                           protect_first: int = 0, protect_last: int = 0) -> list[int]:
    """The least important layers (not necessarily contiguous) that meet ``target``."""
    imp = scores.layer_importance()
    L = len(imp)
    prot = protected_set(L, protect_first, protect_last)
    order = sorted((i for i in range(L) if i not in prot), key=lambda i: (imp[i], i))
    k = layers_for_target(target, layer_params, total_params)
    if k is None:
        need = target.param_ratio * total_params
        chosen, acc = [], 0
        for i in order:
            if acc >= need:
                break
            chosen.append(i)
            acc += layer_params[i]
        if acc < need:
            raise StreamlineError(f"removable layers hold only {acc / total_params:.3f} of the parameters",
                                  argument="target.param_ratio", value=target.param_ratio)
        check_count(len(chosen), L, len(prot))
        return sorted(chosen)
    check_count(k, L, len(prot))
    return sorted(order[:k])


def select_block(scores: ScoreResult, target: Target, layer_params: Sequence[int], total_params: int,
                 protect_first: int = 0, protect_last: int = 0) -> list[int]:
    """The best contiguous block of ``n`` layers (lowest block importance) that meets ``target``."""
    L = len(layer_params)
    prot = protected_set(L, protect_first, protect_last)
    n = target_layer_count(target, layer_params, total_params)
    check_count(n, L, len(prot))
    imp = scores.block_importance(n)
    candidates = [l for l in range(L - n + 1) if not (set(range(l, l + n)) & prot)]
    if not candidates:
        raise StreamlineError(f"no block of {n} layers avoids the protected layers {sorted(prot)}")
    best = min(candidates, key=lambda l: (imp[l], l))
    return list(range(best, best + n))


def validate_layer_indices(indices: Sequence[int], num_layers: int) -> list[int]:
    out = sorted(set(int(i) for i in indices))
    bad = [i for i in out if i < 0 or i >= num_layers]
    if bad:
        raise StreamlineError(f"layer index {bad[0]} is out of range: the model has layers 0..{num_layers - 1}")
    if not out:
        raise StreamlineError("no layers given to remove")
    if len(out) >= num_layers:
        raise StreamlineError(f"cannot remove all {num_layers} layers: at least one must stay")
    return out


def ratio_to_count(ratio: float, num_layers: int) -> int:
    return max(1, int(math.floor(ratio * num_layers + 0.5)))
