"""Typed plan operations: what one step of a plan did, which layers it touched, what became of them, how it reads in
the model card, which paper it cites, and how it is applied to a base model.

``OPERATION_TYPES`` is the one table of operation types (``"type"`` in ``streamline_plan.json``).  An operation is a
dataclass; it also reads like the JSON object it is saved as (``op["layers"]``, ``op.get("rule")``), and keys this
version does not declare are kept in ``extra`` and written back.  Importing this module is light (no torch): the
function that applies an operation lives with its method and is imported when a plan is applied.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterator

from .errors import StreamlineError


def _ranges(idx: list[int]) -> str:
    from .utils import contiguous_runs

    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in contiguous_runs(sorted(idx)))


@dataclass(eq=False)
class PlanOperation(MutableMapping):
    """One operation of a plan.  ``layers``: the original indices of the layers it acts on."""

    type: ClassVar[str] = ""
    apply_module: ClassVar[str] = ""  # the module whose ``register_operation(type)`` function applies it

    layers: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not declare (kept, written back)

    # -- what it did --------------------------------------------------------------------------------------------
    def removed(self) -> list[int]:
        """Original indices of the layers that are gone after it (removed, merged away or replaced)."""
        return list(self.layers)

    def added(self) -> int:
        """Layers (modules in a layer slot) it inserts."""
        return 0

    def fates(self, plan: Any) -> dict[int, str]:
        """What became of each layer it touched (the card's layer table)."""
        return {int(i): "removed" for i in self.removed()}

    def describe(self, plan: Any) -> str:
        """One sentence for the model card."""
        rest = {k: v for k, v in self.to_dict().items() if k not in ("type", "layers")}
        return (f"`{self.type}` on layer(s) {_ranges(self.layers)}" +
                (f" ({json.dumps(rest, default=str)})" if rest else "") + ".")

    def citations(self, plan: Any) -> list[tuple[str, str]]:
        """``(key, why)`` of the papers it follows (hf_streamline.publishing.citations)."""
        return []

    def apply(self, model: Any, state: dict[str, Any], **kwargs: Any) -> Any:
        """Apply it to ``model`` (``state["current"]``: the original index of each current layer)."""
        from .plan import OPERATIONS

        if self.type not in OPERATIONS:
            importlib.import_module(self.apply_module)
        return OPERATIONS[self.type](model, self, state, **kwargs) or model

    # -- the JSON object -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                if value is not None or f.name == "layers":
                    out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PlanOperation":
        """The typed operation of a plan's JSON object (its ``type`` picks the class)."""
        kind = d.get("type")
        op_cls = OPERATION_TYPES.get(kind) if isinstance(kind, str) else None
        if op_cls is None:
            raise StreamlineError(f"plan operation {kind!r} is unknown; known: {sorted(OPERATION_TYPES)}")
        names = {f.name for f in fields(op_cls)} - {"extra"}
        return op_cls(**{k: v for k, v in d.items() if k in names},
                      extra={k: v for k, v in d.items() if k not in names and k != "type"})

    def _field(self, key: str) -> bool:
        return key != "extra" and key in {f.name for f in fields(self)}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "type":
            raise KeyError("an operation's type is its class")
        if self._field(key):
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if self._field(key):
            raise KeyError(f"{key!r} is a field of {type(self).__name__}")
        del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


def _chosen_by(plan: Any) -> str:
    return f", chosen by `{plan.metric}`" if plan.metric and plan.selection != "user" else " (chosen by hand)"


@dataclass(eq=False, repr=False)
class RemoveOp(PlanOperation):
    """Whole decoder layers removed (hf_streamline.pruning)."""

    type: ClassVar[str] = "remove"
    apply_module: ClassVar[str] = "hf_streamline.pruning"

    def describe(self, plan: Any) -> str:
        return f"Removed layer(s) {_ranges(self.layers)}{_chosen_by(plan)}."


@dataclass(eq=False, repr=False)
class MergeOp(PlanOperation):
    """A window of consecutive layers merged into its bottom layer by a merge rule (hf_streamline.merging)."""

    type: ClassVar[str] = "merge"
    apply_module: ClassVar[str] = "hf_streamline.merging"

    rule: str | None = None

    def removed(self) -> list[int]:
        return [i for i in self.layers if i != min(self.layers)] if self.layers else []

    def fates(self, plan: Any) -> dict[int, str]:
        if not self.layers:
            return {}
        base = min(self.layers)
        out = {i: f"merged into {base}" for i in self.layers if i != base}
        out[base] = f"absorbs {_ranges([i for i in self.layers if i != base])} (`{self.rule}`)"
        return out

    def describe(self, plan: Any) -> str:
        keep = min(self.layers) if self.layers else None
        return (f"Merged layers {_ranges(self.layers)} into one layer at position {keep} with the `{self.rule}` rule "
                "(the others are gone).")

    def citations(self, plan: Any) -> list[tuple[str, str]]:
        from .plugins import MERGE_RULES

        from .publishing.citations import SLIDING_WINDOW

        out = [SLIDING_WINDOW] if plan.selection == "sliding_window" else []
        return out + _plugin_citations(MERGE_RULES, self.rule)


@dataclass(eq=False, repr=False)
class ReplaceOp(PlanOperation):
    """A block of consecutive layers replaced by one small module of a replacement kind (hf_streamline.replacement),
    or removed (kind ``none``)."""

    type: ClassVar[str] = "replace"
    apply_module: ClassVar[str] = "hf_streamline.replacement"

    kind: str | None = None
    options: dict[str, Any] | None = None
    trained: bool | None = None

    @property
    def replaces(self) -> bool:
        """Whether a module takes the block's place (every kind but ``none``)."""
        return self.kind not in (None, "none")

    def added(self) -> int:
        return 1 if self.replaces else 0

    def fates(self, plan: Any) -> dict[int, str]:
        return {int(i): f"replaced by `{self.kind}`" if self.replaces else "removed" for i in self.layers}

    def describe(self, plan: Any) -> str:
        if not self.replaces:
            return f"Removed block {_ranges(self.layers)} (replacement `none`)."
        trained = "trained" if self.trained else "untrained"
        return f"Replaced block {_ranges(self.layers)} by one {trained} `{self.kind}` module."

    def citations(self, plan: Any) -> list[tuple[str, str]]:
        from .plugins import KINDS

        return _plugin_citations(KINDS, self.kind)


@dataclass(eq=False, repr=False)
class ReplaceLinearOp(PlanOperation):
    """A block removed and, where it helps, replaced by a linear map folded into the layer below it (ReplaceMe;
    hf_streamline.replacement.linear)."""

    type: ClassVar[str] = "replace_linear"
    apply_module: ClassVar[str] = "hf_streamline.replacement"

    fold_into: int | None = None
    folded: bool | None = None

    def fates(self, plan: Any) -> dict[int, str]:
        out = {int(i): f"replaced by a linear map folded into layer {self.fold_into}" if self.folded else "removed"
               for i in self.layers}
        if self.folded and self.fold_into is not None:
            out[int(self.fold_into)] = (f"kept; its MLP output projection absorbs the linear map of "
                                        f"{_ranges(self.layers)}")
        return out

    def describe(self, plan: Any) -> str:
        from .formatting import number

        e = self.extra
        held = e.get("heldout_perplexity") or {}
        check = (f" Held-out calibration perplexity: plain removal {number(held.get('removed'))}, with the map "
                 f"{number(held.get('folded'))}." if held else "")
        if not self.folded:
            return (f"Removed block {_ranges(self.layers)}. A linear map was fitted to stand in for it, but it did not "
                    f"help on held-out calibration text, so the block was removed without it.{check}")
        skip = e.get("skip_first_tokens") or 0
        how = ("least squares in float64" if e.get("solver") == "lstsq"
               else "Adam on the token cosine distance, started from the least-squares solution")
        return (f"Replaced block {_ranges(self.layers)} by one linear map on the hidden states ({how}, fitted on "
                f"{e.get('tokens', '?')} calibration tokens"
                f"{f', the first {skip} of each sequence left out' if skip else ''}; relative residual "
                f"{number(e.get('residual'))} against {number(e.get('removal_residual'))} for plain removal), folded "
                f"into the MLP output projection of layer {self.fold_into}: no training, and the model stays a plain "
                f"checkpoint of its architecture.{check}")

    def citations(self, plan: Any) -> list[tuple[str, str]]:
        from .plugins import KINDS

        return _plugin_citations(KINDS, "linear")


@dataclass(eq=False, repr=False)
class RemoveSublayerOp(PlanOperation):
    """The attention or MLP sub-block of some layers removed; the layers stay (hf_streamline.sublayers)."""

    type: ClassVar[str] = "remove_sublayer"
    apply_module: ClassVar[str] = "hf_streamline.sublayers"

    unit: str | None = None
    export: str | None = None

    def removed(self) -> list[int]:
        return []

    def fates(self, plan: Any) -> dict[int, str]:
        return {int(i): f"kept; no {self.unit} sub-block" for i in self.layers}

    def describe(self, plan: Any) -> str:
        done = ("their output projections are zero (a plain checkpoint, no speed-up)" if self.export == "zeroed"
                else "they compute nothing" + (" and hold no KV cache" if self.unit == "attention" else ""))
        return f"Removed the {self.unit} sub-block of layer(s) {_ranges(self.layers)}{_chosen_by(plan)}; {done}."


def _plugin_citations(registry: Any, name: Any) -> list[tuple[str, str]]:
    if not isinstance(name, str) or name not in registry:
        return []
    cite = getattr(registry[name], "citation", None)
    return [cite] if cite else []


# the operation types of streamline_plan.json (one line each)
OPERATION_TYPES: dict[str, type[PlanOperation]] = {
    op.type: op for op in (RemoveOp, MergeOp, ReplaceOp, ReplaceLinearOp, RemoveSublayerOp)}


def as_operation(op: Any) -> PlanOperation:
    """``op`` as a typed operation (a plan's JSON object is converted; a typed one is returned as it is)."""
    if isinstance(op, PlanOperation):
        return op
    if not isinstance(op, dict) or not isinstance(op.get("type"), str):
        raise StreamlineError(f"a plan operation is {op!r}, not an object with a 'type' and 'layers'")
    return PlanOperation.from_dict(op)
