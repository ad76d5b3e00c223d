"""The plan: a small JSON-serialisable record of what was done to a base model.

It is saved as ``streamline_plan.json`` beside every output model and rendered into its model card.  Applying the same
plan to the same base model gives the same model.  Layer indices in every operation refer to the *original* model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import StreamlineError

PLAN_FILENAME = "streamline_plan.json"
PLAN_FORMAT_VERSION = 1


@dataclass
class StreamlinePlan:
    """What was done to ``base_model``: the operations in order, and how they were chosen."""

    base_model: str = field(metadata={"help": "Hub id or path of the model the plan applies to."})
    num_layers_before: int = field(metadata={"help": "Decoder layers of the base model."})
    method: str = field(default="remove", metadata={"help": "remove | replace | merge | ... (the main operation)."})
    metric: str | None = field(default=None, metadata={"help": "Score used to choose the layers."})
    selection: str | None = field(default=None, metadata={"help": "layers | block | iterative | user."})
    removed_layers: list[int] = field(default_factory=list, metadata={"help": "Original indices of every layer that is gone (removed, merged away or replaced)."})
    operations: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "Ordered operations, each {'type': ..., ...}."})
    scores: dict[str, Any] = field(default_factory=dict, metadata={"help": "Scores that drove the choice, by metric."})
    calibration: dict[str, Any] | None = field(default=None, metadata={"help": "Calibration recipe (source, samples, seq_len, seed, sampler)."})
    steps: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "Iterative selection: one record per step."})
    healing: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "Training applied after the structural change."})
    evaluation: dict[str, Any] = field(default_factory=dict, metadata={"help": "Measured results (perplexity before/after, ...)."})
    versions: dict[str, str] = field(default_factory=dict, metadata={"help": "Library versions that made the plan."})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "Anything method-specific."})
    format_version: int = PLAN_FORMAT_VERSION

    @property
    def num_layers_after(self) -> int:
        added = sum(1 for op in self.operations if op.get("type") == "replace" and op.get("kind") not in (None, "none"))
        return self.num_layers_before - len(self.removed_layers) + added

    @property
    def kept_layers(self) -> list[int]:
        gone = set(self.removed_layers)
        return [i for i in range(self.num_layers_before) if i not in gone]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_layers_after"] = self.num_layers_after
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=_json_default)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamlinePlan":
        d = dict(d)
        d.pop("num_layers_after", None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise StreamlineError(f"plan has unknown keys {unknown}; it was written by a newer hf_streamline?")
        if int(d.get("format_version", 1)) > PLAN_FORMAT_VERSION:
            raise StreamlineError(f"plan format {d['format_version']} is newer than this hf_streamline understands")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "StreamlinePlan":
        return cls.from_dict(json.loads(text))

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / PLAN_FILENAME
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StreamlinePlan":
        p = Path(path)
        if p.is_dir():
            p = p / PLAN_FILENAME
        if not p.exists():
            raise StreamlineError(f"no plan at {str(p)!r} (expected a {PLAN_FILENAME} file or a folder holding one)")
        return cls.from_json(p.read_text(encoding="utf-8"))


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# Operation registry: how each operation type is applied to a model.  Other modules register their own
# (replace, merge, ...); the core registers "remove".
OPERATIONS: dict[str, Callable[..., Any]] = {}
# Where each operation type is registered (imported on first use by ``apply_plan``).
OPERATION_MODULES: dict[str, str] = {
    "remove": "hf_streamline.pruning",
    "replace": "hf_streamline.replacement",
    "merge": "hf_streamline.merging",
}


def register_operation(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        OPERATIONS[name] = fn
        return fn

    return deco


def apply_plan(model: Any, plan: StreamlinePlan, **kwargs: Any) -> Any:
    """Apply every operation of ``plan`` to ``model`` (in place) and return it."""
    from .architecture import num_layers

    if num_layers(model) != plan.num_layers_before:
        raise StreamlineError(
            f"the plan is for a model with {plan.num_layers_before} layers ({plan.base_model}); this one has {num_layers(model)}"
        )
    state: dict[str, Any] = {"current": list(range(plan.num_layers_before))}  # original index of each current slot
    for op in plan.operations:
        if op.get("type") not in OPERATIONS and op.get("type") in OPERATION_MODULES:
            import importlib

            importlib.import_module(OPERATION_MODULES[op["type"]])
        fn = OPERATIONS.get(op.get("type"))
        if fn is None:
            raise StreamlineError(f"plan operation {op.get('type')!r} is unknown; known: {sorted(OPERATIONS)}")
        model = fn(model, op, state, **kwargs) or model
    return model
