"""Units finer than a layer: the attention and the MLP sub-block of a decoder layer, removable one by one.

A *unit* is a whole decoder layer (``layer``), its attention sub-block (``attention``) or its MLP sub-block (``mlp``).
``--unit sublayer`` means attention and MLP units together; removing both sub-blocks of one layer is removing the
layer.  What a removal leaves:

- only whole layers: a plain checkpoint (layers deleted, config sliced, as ``prune`` does);
- sub-blocks (``export="streamline"``, the default): a ``StreamlineForCausalLM`` folder whose config lists each removed
  sub-block (``removed_sublayers``); the sub-block is replaced by a module that adds nothing and computes nothing,
  and an attention-free layer's KV-cache slot is a ``DummyLayer`` (no tensors), so decoding is faster and the cache
  smaller;
- sub-blocks with ``export="zeroed"``: a plain checkpoint of the base architecture whose removed sub-blocks' output
  projections (and their biases) are zero: it loads anywhere and gives the same logits, without the speed-up.

Architecture knowledge comes from the tables in :mod:`hf_streamline.architecture` (``ATTENTION_MODULE_NAMES``,
``MLP_MODULE_NAMES``, their output projections, ``PARALLEL_RESIDUAL_*``); parallel-residual architectures (GPT-NeoX
with ``use_parallel_residual``, Phi, GPT-J, Falcon, Cohere) are refused for sub-block units.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .architecture import (PassThroughLayer, attention_output_projection, check_separable_sublayers,
                           find_attention, find_decoder_layers_path, find_mlp_module, get_decoder_layers,
                           mlp_output_projections, num_layers)
from .errors import StreamlineError
from .options import SUBLAYER_EXPORTS as EXPORTS, UNIT_CHOICES
from .plan import register_operation

SUB_KINDS = ("attention", "mlp")


@dataclass(frozen=True, order=True)
class Unit:
    """One removable unit: decoder layer ``layer`` (original index) whole, or its ``attention`` / ``mlp``."""

    layer: int
    kind: str = "layer"

    def __post_init__(self) -> None:
        if self.kind not in ("layer",) + SUB_KINDS:
            raise StreamlineError(f"unit kind {self.kind!r} is unknown; use one of layer, attention, mlp")

    def __str__(self) -> str:
        return str(self.layer) if self.kind == "layer" else f"{self.layer}.{self.kind}"

    @classmethod
    def parse(cls, text: str) -> "Unit":
        """``"12"`` (the layer), ``"12.attention"`` / ``"12.attn"`` or ``"12.mlp"``."""
        head, _, tail = str(text).strip().partition(".")
        kind = {"": "layer", "attn": "attention"}.get(tail, tail)
        try:
            return cls(int(head), kind)
        except ValueError:
            raise StreamlineError(f"unit {text!r}: expected LAYER, LAYER.attention or LAYER.mlp (e.g. 12.attention)")


def candidate_units(num_layers_: int, unit: str) -> list[Unit]:
    """Every unit of kind ``unit`` (``UNIT_CHOICES``) in a model of ``num_layers_`` layers."""
    if unit not in UNIT_CHOICES:
        raise StreamlineError(f"unknown; use one of {', '.join(UNIT_CHOICES)}", argument="unit", value=unit)
    kinds = SUB_KINDS if unit == "sublayer" else (unit,)
    return [Unit(i, k) for i in range(num_layers_) for k in kinds]


def normalise_units(units: Iterable[Unit]) -> list[Unit]:
    """Sorted, without duplicates; a layer whose attention and MLP both go becomes the whole layer."""
    units = set(units)
    whole = {u.layer for u in units if u.kind == "layer"}
    both = {u.layer for u in units if u.kind == "attention"} & {u.layer for u in units if u.kind == "mlp"}
    whole |= both
    return sorted({Unit(i) for i in whole} | {u for u in units if u.layer not in whole})


def check_units(model: nn.Module, units: Sequence[Unit]) -> list[Unit]:
    """Refuse units outside the model, a removal that leaves no layer, and sub-blocks of parallel architectures."""
    L = num_layers(model)
    units = normalise_units(units)
    if not units:
        raise StreamlineError("no units to remove")
    bad = [u for u in units if not 0 <= u.layer < L]
    if bad:
        raise StreamlineError(f"unit {bad[0]} is out of range: the model has layers 0..{L - 1}")
    if sum(1 for u in units if u.kind == "layer") >= L:
        raise StreamlineError(f"cannot remove all {L} layers: at least one must stay")
    if any(u.kind != "layer" for u in units):
        check_separable_sublayers(model)
    return units


def unit_parameter_count(layer: nn.Module, kind: str) -> int:
    if kind == "layer":
        return sum(p.numel() for p in layer.parameters())
    module = find_attention(layer)[0] if kind == "attention" else find_mlp_module(layer)[0]
    return sum(p.numel() for p in module.parameters())


def _skipped(kind: str) -> nn.Module:
    from .modeling.modeling_streamline import SKIPPED_SUBLAYERS

    return SKIPPED_SUBLAYERS[kind]()


def _sub_name(layer: nn.Module, kind: str) -> str:
    return (find_attention(layer) if kind == "attention" else find_mlp_module(layer))[1]


class skip_units:
    """Context manager: run ``model`` as if ``units`` (current indices) were removed; nothing is copied and every
    module is put back on exit.  Whole layers pass their input through; sub-blocks add nothing."""

    def __init__(self, model: nn.Module, units: Iterable[Unit]):
        self.model = model
        self.units = check_units(model, list(units))

    def __enter__(self) -> nn.Module:
        layers = get_decoder_layers(self.model)
        self._layers, self._subs = {}, []
        for u in self.units:
            layer = layers[u.layer]
            if u.kind == "layer":
                self._layers[u.layer] = layer
                layers[u.layer] = PassThroughLayer(layer)
            else:
                name = _sub_name(layer, u.kind)
                self._subs.append((layer, name, getattr(layer, name)))
                setattr(layer, name, _skipped(u.kind))
        return self.model

    def __exit__(self, *exc: Any) -> None:
        layers = get_decoder_layers(self.model)
        for i, layer in self._layers.items():
            layers[i] = layer
        for layer, name, module in reversed(self._subs):
            setattr(layer, name, module)


def _unwrap(model: nn.Module) -> tuple[nn.Module, list[dict], list[dict]]:
    from .modeling import StreamlineForCausalLM

    if isinstance(model, StreamlineForCausalLM):
        return model.model, [dict(r) for r in model.config.replacements], \
            [dict(r) for r in model.config.removed_sublayers]
    return model, [], []


def remove_sublayers(model: nn.Module, slots: Sequence[int], kind: str, replaces: Sequence[int] | None = None,
                     export: str = "streamline") -> nn.Module:
    """Remove sub-block ``kind`` (``attention`` / ``mlp``) of the layers in ``slots`` (current indices); return the
    model: a ``StreamlineForCausalLM`` (``export="streamline"``) or the same plain model with the sub-blocks' output
    projections zeroed (``export="zeroed"``).  ``replaces``: the original indices, recorded in the config."""
    if kind not in SUB_KINDS:
        raise StreamlineError(f"sub-block {kind!r} is unknown; use attention or mlp")
    if export not in EXPORTS:
        raise StreamlineError(f"unknown; use one of {', '.join(EXPORTS)}", argument="export", value=export)
    inner, replacements, removed = _unwrap(model)
    check_separable_sublayers(inner)
    layers = get_decoder_layers(inner)
    slots = [int(s) for s in slots]
    if export == "zeroed":  # --sequential: the zeroed projections must be in memory to be changed
        from .offload import onload

        for slot in slots:
            if 0 <= slot < len(layers):
                onload(layers[slot])
    replaces = list(replaces) if replaces is not None else slots
    taken = {int(r["slot"]) for r in replacements}
    done = {(int(r["slot"]), r["unit"]) for r in removed}
    for slot in slots:
        if not 0 <= slot < len(layers):
            raise StreamlineError(f"layer index {slot} is out of range: the model has layers 0..{len(layers) - 1}")
        if slot in taken:
            raise StreamlineError(f"slot {slot} holds a replacement module, which has no {kind} sub-block to remove")
        if (slot, kind) in done:
            raise StreamlineError(f"the {kind} of layer {slot} was already removed")
    if export == "zeroed":
        if replacements or removed:
            raise StreamlineError("needs a plain model; this one already holds replacement modules or removed "
                                  "sub-blocks", argument="export", value=export)
        with torch.no_grad():
            for slot in slots:
                projs = [attention_output_projection(layers[slot])] if kind == "attention" else \
                    mlp_output_projections(layers[slot], allow_post_norm=True)
                for proj in projs:
                    getattr(proj.module, proj.weight).zero_()
                    if proj.bias is not None:
                        getattr(proj.module, proj.bias).zero_()
        return model
    for slot, orig in zip(slots, replaces):
        name = _sub_name(layers[slot], kind)
        setattr(layers[slot], name, _skipped(kind))
        removed.append({"slot": slot, "unit": kind, "module": name, "replaces": int(orig)})
    return _wrap(model, inner, replacements, removed)


def _wrap(model: nn.Module, inner: nn.Module, replacements: list[dict], removed: list[dict]) -> nn.Module:
    from .modeling import StreamlineConfig, StreamlineForCausalLM

    name = getattr(model.config, "base_model", None) or getattr(inner.config, "_name_or_path", "") or None
    config = StreamlineConfig(text_config=inner.config, replacements=sorted(replacements, key=lambda r: r["slot"]),
                              removed_sublayers=sorted(removed, key=lambda r: (r["slot"], r["unit"])),
                              layers_path=find_decoder_layers_path(inner), base_model=name)
    wrapper = StreamlineForCausalLM(config, base_model=inner)
    wrapper.generation_config = copy.deepcopy(inner.generation_config)
    wrapper.eval() if not inner.training else wrapper.train()
    return wrapper


def plan_operations(units: Sequence[Unit], export: str = "streamline") -> list[Any]:
    """The plan operations that remove ``units`` (original indices): whole layers first, then each sub-block kind."""
    from .operations import RemoveOp, RemoveSublayerOp

    units = normalise_units(units)
    ops: list[Any] = []
    whole = [u.layer for u in units if u.kind == "layer"]
    if whole:
        ops.append(RemoveOp(layers=whole))
    for kind in SUB_KINDS:
        layers = [u.layer for u in units if u.kind == kind]
        if layers:
            ops.append(RemoveSublayerOp(layers=layers, unit=kind, export=None if export == "streamline" else export))
    return ops


def record_removal(plan: Any, units: Sequence[Unit], export: str = "streamline") -> None:
    """Write the removal of ``units`` (original indices) into ``plan``: its operations, the layers that are gone
    (whole, or both sub-blocks), the units as chosen and the export."""
    plan.operations = plan_operations(units, export)  # (the whole layers among them are its removed_layers)
    plan.extra.update({"removed_units": [str(u) for u in sorted(units)], "export": export})


def remove_units(model: nn.Module, units: Sequence[Unit], export: str = "streamline") -> nn.Module:
    """Remove ``units`` (indices of ``model``'s current layers) and return the result (see the module docstring)."""
    from .pruning import remove_layers

    units = check_units(model, units)
    state = {"current": list(range(num_layers(model)))}
    for op in plan_operations(units, export):
        if op["type"] == "remove":
            remove_layers(model, op["layers"])
            state["current"] = [o for o in state["current"] if o not in set(op["layers"])]
        else:
            model = _apply_remove_sublayer(model, op, state)
    return model


@register_operation("remove_sublayer")
def _apply_remove_sublayer(model: nn.Module, op: dict, state: dict, **_: Any) -> nn.Module:
    current: list[int] = state["current"]
    orig = [int(i) for i in op["layers"]]
    missing = [o for o in orig if o not in current]
    if missing:
        raise StreamlineError(f"plan removes the {op.get('unit')} of layer(s) {missing}, which an earlier operation "
                              "already removed")
    return remove_sublayers(model, [current.index(o) for o in orig], op.get("unit"), replaces=orig,
                            export=op.get("export", "streamline"))


def kv_cache_bytes_per_token(cache: Any, seq_len: int) -> float:
    """Bytes the KV cache ``cache`` holds per token of a sequence of ``seq_len`` tokens (all layers, keys and values)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total / max(int(seq_len), 1)


__all__ = ["EXPORTS", "SUB_KINDS", "UNIT_CHOICES", "Unit", "candidate_units", "check_units", "kv_cache_bytes_per_token",
           "normalise_units", "plan_operations", "record_removal", "remove_sublayers", "remove_units", "skip_units",
           "unit_parameter_count"]
