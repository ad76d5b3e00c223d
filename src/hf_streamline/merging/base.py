"""Merge rules: how the parameters of a window of consecutive decoder layers become one layer.

One rule per file, each registered here by name (like ``scores/base.py``).  A rule sees, for one parameter, the
tensors of every layer of the window from the **bottom** (the layer that stays, index 0) to the **top** (index -1),
and the parameter's *kind*:

- ``"norm"``: a parameter of a normalisation module (LayerNorm, RMSNorm, q/k norms, Gemma's offset norms, ...);
- ``"weight"``: everything else -- matmul weights of attention and MLP, their biases, MoE expert tensors, routers.

The kind is decided generically (see :func:`parameter_kinds`): a leaf module whose parameters are all 1-D and whose
class is a normalisation class (``torch.nn`` norms, or a class name containing ``Norm``) holds ``norm`` parameters.
No ``model_type`` is consulted.  Biases of a linear layer are ``weight`` parameters: they travel with their matmul.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..errors import StreamlineError
from ..plugins import MERGE_RULES

NORM_KIND = "norm"
WEIGHT_KIND = "weight"

_TORCH_NORMS: tuple[type, ...] = tuple(
    c for c in (getattr(nn, n, None) for n in ("LayerNorm", "GroupNorm", "RMSNorm", "BatchNorm1d", "LocalResponseNorm"))
    if c is not None
)


class MergeRule:
    """Base class.  ``combine(tensors, kind)`` returns the merged tensor (float32 math, any dtype in/out)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    citation: ClassVar[tuple[str, str] | None]  # (key of publishing.citations.CITATIONS, what of the paper this is) or None: cited by the model card

    def combine(self, tensors: Sequence[torch.Tensor], kind: str) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


register_merge_rule = MERGE_RULES.register


def get_merge_rule(name: str | MergeRule) -> MergeRule:
    return name if isinstance(name, MergeRule) else MERGE_RULES.create(name)


def is_norm_module(module: nn.Module) -> bool:
    """A normalisation module: a leaf whose parameters are all 1-D, of a torch norm class or a class named *Norm*."""
    params = list(module.parameters(recurse=False))
    if not params or any(p.dim() != 1 for p in params):
        return False
    if any(True for _ in module.children()):
        return False
    return isinstance(module, _TORCH_NORMS) or "norm" in type(module).__name__.lower()


def parameter_kinds(layer: nn.Module) -> dict[str, str]:
    """``{parameter name: "norm" | "weight"}`` for every parameter of ``layer`` (names as in ``named_parameters``)."""
    kinds: dict[str, str] = {}
    for mod_name, module in layer.named_modules():
        kind = NORM_KIND if is_norm_module(module) else WEIGHT_KIND
        for p_name, _ in module.named_parameters(recurse=False):
            kinds[f"{mod_name}.{p_name}" if mod_name else p_name] = kind
    return kinds


@dataclass
class WindowParameters:
    """The parameters of a window's layers, checked to be mergeable (same names, shapes and dtypes)."""

    names: list[str]
    kinds: dict[str, str]
    per_layer: list[dict[str, torch.Tensor]]  # bottom .. top


def window_parameters(layers: Sequence[nn.Module], labels: Sequence[Any] | None = None) -> WindowParameters:
    """Collect and check the parameters of ``layers`` (bottom first).  Raises if they cannot be merged."""
    if len(layers) < 2:
        raise StreamlineError(f"a merge window needs at least 2 layers, got {len(layers)}")
    labels = list(labels) if labels is not None else list(range(len(layers)))
    per_layer = [dict(layer.named_parameters()) for layer in layers]
    base = per_layer[0]
    for lab, params in zip(labels[1:], per_layer[1:]):
        if set(params) != set(base):
            diff = sorted(set(params) ^ set(base))
            raise StreamlineError(
                f"layers {labels[0]} and {lab} have different parameters ({', '.join(diff[:4])}"
                f"{', ...' if len(diff) > 4 else ''}): layers of different kinds (e.g. MoE and dense) cannot be merged"
            )
        for n, p in params.items():
            if p.shape != base[n].shape or p.dtype != base[n].dtype:
                raise StreamlineError(
                    f"parameter {n!r} differs between layers {labels[0]} ({tuple(base[n].shape)}, {base[n].dtype}) and "
                    f"{lab} ({tuple(p.shape)}, {p.dtype}); these layers cannot be merged"
                )
    shared = [n for n in base if any(params[n] is base[n] for params in per_layer[1:])]
    if shared:
        raise StreamlineError(f"parameters {shared[:4]} are shared between the window's layers; cannot merge them")
    return WindowParameters(names=list(base), kinds=parameter_kinds(layers[0]), per_layer=per_layer)


@torch.no_grad()
def merged_parameters(layers: Sequence[nn.Module], rule: str | MergeRule,
                      labels: Sequence[Any] | None = None) -> dict[str, torch.Tensor]:
    """The merged value of every parameter of the window ``layers`` (bottom first), in each parameter's dtype."""
    rule = get_merge_rule(rule)
    wp = window_parameters(layers, labels)
    out: dict[str, torch.Tensor] = {}
    for name in wp.names:
        tensors = [params[name].detach() for params in wp.per_layer]
        if not tensors[0].is_floating_point():
            out[name] = tensors[0].clone()
            continue
        merged = rule.combine(tensors, wp.kinds[name])
        out[name] = merged.to(dtype=tensors[0].dtype, device=tensors[0].device)
    return out


@torch.no_grad()
def write_parameters(layer: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` into ``layer``'s parameters in place (no new tensors: the model's storage is reused)."""
    params = dict(layer.named_parameters())
    for name, value in values.items():
        params[name].data.copy_(value)


@torch.no_grad()
def snapshot_parameters(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in layer.named_parameters()}


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32) if t.dtype != torch.float64 else t
