"""The plan: a small JSON-serialisable record of what was done to a base model.

It is saved as ``streamline_plan.json`` beside every output model and rendered into its model card.  Applying the same
plan to the same base model gives the same model.  Layer indices in every operation refer to the *original* model.

Format 2: the operations are typed (hf_streamline.operations); ``removed_layers`` and ``num_layers_after`` follow from
them (both still written, for readers of the JSON).  A format-1 plan reads as before: its ``removed_layers`` must
agree with its operations (a plan with ``removed_layers`` and no operations reads as one ``remove``).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import InitVar, asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import StreamlineError
from .operations import PlanOperation, RemoveOp, as_operation

PLAN_FILENAME = "streamline_plan.json"
PLAN_FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


class OperationList(list):
    """A plan's operations: whatever is put in (a typed operation or its JSON object) is kept typed."""

    def __init__(self, items: Iterable[Any] = ()):
        super().__init__(as_operation(o) for o in items)

    def append(self, op: Any) -> None:
        super().append(as_operation(op))

    def extend(self, ops: Iterable[Any]) -> None:
        super().extend(as_operation(o) for o in ops)

    def insert(self, i: int, op: Any) -> None:  # type: ignore[override]
        super().insert(i, as_operation(op))

    def __setitem__(self, i: Any, value: Any) -> None:
        super().__setitem__(i, [as_operation(o) for o in value] if isinstance(i, slice) else as_operation(value))

    def __iadd__(self, ops: Iterable[Any]) -> "OperationList":
        self.extend(ops)
        return self


@dataclass
class StreamlinePlan:
    """What was done to ``base_model``: the operations in order, and how they were chosen."""

    base_model: str = field(metadata={"help": "Hub id or path of the model the plan applies to."})
    num_layers_before: int = field(metadata={"help": "Decoder layers of the base model."})
    method: str = field(default="remove", metadata={"help": "remove | replace | merge | ... (the main operation)."})
    metric: str | None = field(default=None, metadata={"help": "Score used to choose the layers."})
    selection: str | None = field(default=None, metadata={"help": "layers | block | iterative | user."})
    removed_layers: InitVar[list[int] | None] = None  # read from a format-1 plan; derived from the operations (below)
    operations: list[PlanOperation] = field(default_factory=list, metadata={"help": "Ordered typed operations (hf_streamline.operations), saved as {'type': ..., 'layers': [...], ...}."})
    scores: dict[str, Any] = field(default_factory=dict, metadata={"help": "Scores that drove the choice, by metric."})
    calibration: dict[str, Any] | None = field(default=None, metadata={"help": "Calibration recipe (source, samples, seq_len, seed, sampler)."})
    steps: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "Iterative selection: one record per step."})
    healing: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "Training applied after the structural change."})
    evaluation: dict[str, Any] = field(default_factory=dict, metadata={"help": "Measured results (perplexity before/after, ...)."})
    versions: dict[str, str] = field(default_factory=dict, metadata={"help": "Library versions that made the plan."})
    base_config: dict[str, Any] = field(default_factory=dict, metadata={"help": "What the base model was: architecture, hidden_size, vocab_size, num_hidden_layers and config_sha256 (see base_config_record); apply checks --model against it."})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "Anything method-specific."})
    format_version: int = PLAN_FORMAT_VERSION
    attachments: dict[str, bytes | None] = field(default_factory=dict, compare=False, metadata={"help": "Binary files saved beside the plan (file name -> bytes), e.g. the linear maps of replace_linear; the JSON lists their names, load() reads them back."})

    def __post_init__(self, removed_layers: list[int] | None) -> None:
        if removed_layers:
            self._check_removed(removed_layers)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "operations":
            value = OperationList(value)
        super().__setattr__(name, value)

    def _check_removed(self, layers: Iterable[Any]) -> None:
        """A ``removed_layers`` given by hand (a format-1 plan, an older caller): with no operations it is one
        ``remove``; else it must be what the operations say."""
        given = sorted({int(i) for i in layers})
        if not self.operations:
            if given:
                self.operations.append(RemoveOp(layers=given))
        elif given != self.removed_layers:
            raise StreamlineError(f"the plan's removed_layers {given} disagree with its operations, which remove "
                                  f"{self.removed_layers}; the plan is damaged or was edited: make it again")

    def _removed(self) -> list[int]:
        return sorted({int(i) for op in self.operations for i in op.removed()})

    @property
    def num_layers_after(self) -> int:
        return self.num_layers_before - len(self.removed_layers) + sum(op.added() for op in self.operations)

    @property
    def kept_layers(self) -> list[int]:
        gone = set(self.removed_layers)
        return [i for i in range(self.num_layers_before) if i not in gone]

    def to_dict(self) -> dict[str, Any]:
        attachments, ops = self.attachments, self.operations
        object.__setattr__(self, "attachments", {})
        object.__setattr__(self, "operations", [])  # written below, each by its own to_dict
        try:
            d = asdict(self)
        finally:
            object.__setattr__(self, "attachments", attachments)
            object.__setattr__(self, "operations", ops)
        d["attachments"] = sorted(attachments)
        d["operations"] = [copy.deepcopy(op.to_dict()) for op in self.operations]
        d["removed_layers"] = self.removed_layers
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
        removed = d.pop("removed_layers", None)
        if removed is not None and not isinstance(removed, list):
            raise StreamlineError(f"the plan's 'removed_layers' is a {type(removed).__name__}, not a list")
        for key, kind in (("base_model", str), ("num_layers_before", int)):
            if key not in d:
                raise StreamlineError(f"the plan has no {key!r}; give a streamline_plan.json written by hf-streamline")
            if not isinstance(d[key], kind) or isinstance(d[key], bool):
                raise StreamlineError(f"the plan's {key!r} is {d[key]!r}, not a {kind.__name__}")
        for key in ("operations", "steps", "healing"):
            if key in d and not isinstance(d[key], list):
                raise StreamlineError(f"the plan's {key!r} is a {type(d[key]).__name__}, not a list")
        names = d.get("attachments") or []
        d["attachments"] = dict(names) if isinstance(names, dict) else {_attachment_name(n): None for n in names}
        d["format_version"] = PLAN_FORMAT_VERSION  # read as the current format (saved so)
        for i, op in enumerate(d.get("operations") or [], 1):
            if not isinstance(op, dict) or not isinstance(op.get("type"), str):
                raise StreamlineError(f"operation {i} of the plan is {op!r}, not an object with a 'type' and 'layers'")
        plan = cls(**d)
        plan.validate()
        if removed is not None:
            plan._check_indices(removed, "removed_layers")
            plan._check_removed(removed)
        return plan

    @classmethod
    def from_json(cls, text: str) -> "StreamlinePlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StreamlineError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); give a "
                                  f"{PLAN_FILENAME} written by hf-streamline") from None
        if not isinstance(data, dict):
            raise StreamlineError(f"expected a JSON object (base_model, num_layers_before, operations ...), found a "
                                  f"{type(data).__name__}; give a {PLAN_FILENAME} written by hf-streamline")
        return cls.from_dict(data)

    def validate(self) -> "StreamlinePlan":
        """Refuse a damaged plan: every operation is a typed operation with a non-empty ``layers`` list of original
        indices inside ``0..num_layers_before-1``."""
        n = self.num_layers_before
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise StreamlineError(f"the plan's num_layers_before is {n!r}; it must be a whole number >= 1")
        for i, op in enumerate(self.operations, 1):
            self._check_indices(op.layers, f"operation {i} ({op.type})", empty=False)
        return self

    def _check_indices(self, values: Any, where: str, empty: bool = True) -> None:
        n = self.num_layers_before
        if not isinstance(values, list) or not values and not empty:
            raise StreamlineError(f"{where} has no 'layers' list; every operation names the original layer "
                                  "indices it acts on (the plan is damaged: make it again)")
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool):
                raise StreamlineError(f"{where} names layer {v!r}, which is not a whole number")
            if not 0 <= v < n:
                raise StreamlineError(f"{where} names layer {v}, but the base model has layers 0..{n - 1} "
                                      f"(num_layers_before={n}); the plan is damaged or was edited: make it again")

    def portable(self) -> "StreamlinePlan":
        """A copy that names no path of this machine: the base model by its Hub id or folder name, files by their
        name or ``bundled:`` spec (see :mod:`hf_streamline.portable`).  This is what ``save`` writes."""
        import dataclasses

        from .portable import portable_model_name, portable_value

        d = portable_value(self.to_dict())
        out = copy.copy(self)
        for f in dataclasses.fields(self):
            if f.name in d and f.name != "attachments":
                setattr(out, f.name, d[f.name])  # (operations: typed again by __setattr__)
        out.base_model = portable_model_name(self.base_model)
        out.attachments = dict(self.attachments)
        return out

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``streamline_plan.json`` into ``folder`` (its :meth:`portable` form: no local absolute path)."""
        missing = sorted(n for n, data in self.attachments.items() if data is None)
        if missing:
            raise StreamlineError(f"the plan refers to {missing}, which were not loaded with it; load the plan with "
                                  "StreamlinePlan.load(folder) from the folder that holds them")
        for name, data in self.attachments.items():  # binary files beside the plan (the JSON lists their names)
            (Path(folder) / _attachment_name(name)).write_bytes(data)
        path = Path(folder) / PLAN_FILENAME
        path.write_text(self.portable().to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StreamlinePlan":
        p = Path(path)
        if p.is_dir():
            p = p / PLAN_FILENAME
        if not p.exists():
            raise StreamlineError(f"no plan at {str(p)!r} (expected a {PLAN_FILENAME} file or a folder holding one)")
        from .validation import read_text_file

        try:
            plan = cls.from_json(read_text_file(p, "plan"))
        except StreamlineError as exc:
            msg = str(exc)
            raise StreamlineError(msg if msg.startswith("plan ") else f"plan {str(p)!r}: {msg}") from None
        for name in plan.attachments:
            beside = p.parent / name
            if beside.is_file():
                plan.attachments[name] = beside.read_bytes()
        return plan


def _attachment_name(name: Any) -> str:
    name = str(name)
    if not name or name != Path(name).name or name in (".", "..", PLAN_FILENAME):
        raise StreamlineError(f"plan attachment {name!r}: expected a plain file name beside the plan")
    return name


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


# How each operation type is applied to a model: the module named by its class (hf_streamline.operations,
# ``apply_module``) registers the function with ``register_operation`` when it is imported.
OPERATIONS: dict[str, Callable[..., Any]] = {}


def block_positions(state: dict, layers: Any, verb: str, adjacent: str = "contiguous") -> list[int]:
    """Where the original ``layers`` of a plan operation sit in the model at this point of ``apply_plan``
    (``state["current"]``: the original index of each current layer).  Every layer must still be there and they must be
    adjacent; otherwise a :class:`StreamlineError` says which (``verb``: "replaces", "merges", ...)."""
    current: list[int] = state["current"]
    orig = [int(i) for i in layers]
    missing = [o for o in orig if o not in current]
    if missing:
        raise StreamlineError(f"plan {verb} layer(s) {missing}, which an earlier operation already removed")
    positions = [current.index(o) for o in orig]
    if positions != list(range(positions[0], positions[0] + len(positions))):
        raise StreamlineError(f"plan {verb} layers {orig}, which are not {adjacent} in the model at that point")
    return positions


def register_operation(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        OPERATIONS[name] = fn
        return fn

    return deco


# config keys that say how a model was loaded or saved, not what it is (left out of the base-config hash)
VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "name_or_path", "dtype", "torch_dtype", "use_cache",
                                  "architectures", "auto_map", "quantization_config", "output_attentions",
                                  "output_hidden_states", "return_dict"})


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
                if k not in VOLATILE_CONFIG_KEYS and not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def base_config_record(model_or_config: Any) -> dict[str, Any]:
    """What a plan records of its base model: architecture, hidden size, vocabulary, layer count and a SHA-256 of
    the config (without the keys that only say how it was loaded: dtype, transformers version, ...)."""
    import hashlib

    from .architecture import text_config

    config = getattr(model_or_config, "config", model_or_config)
    if config is None or not hasattr(config, "to_dict"):
        return {}
    tcfg = text_config(config)
    archs = list(getattr(config, "architectures", None) or [])
    arch = archs[0] if archs else (type(model_or_config).__name__ if model_or_config is not config else None)
    blob = json.dumps(_canonical(config.to_dict()), sort_keys=True, default=str)
    return {"architecture": arch, "model_type": getattr(config, "model_type", None),
            "hidden_size": getattr(tcfg, "hidden_size", None), "vocab_size": getattr(tcfg, "vocab_size", None),
            "num_hidden_layers": getattr(tcfg, "num_hidden_layers", None),
            "config_sha256": hashlib.sha256(blob.encode("utf-8")).hexdigest(),
            **({"revision": config._commit_hash} if isinstance(getattr(config, "_commit_hash", None), str) else {})}


def check_plan_base(plan: StreamlinePlan, model_or_config: Any, *, force: bool = False, what: str = "the model") -> None:
    """Refuse to apply ``plan`` to a model other than its base: a different layer count always; a different
    architecture, hidden size, vocabulary or config hash unless ``force`` (then it is a warning)."""
    now = base_config_record(model_or_config)
    layers = now.get("num_hidden_layers")
    if isinstance(layers, int) and layers != plan.num_layers_before:
        raise StreamlineError(f"the plan is for a model with {plan.num_layers_before} layers ({plan.base_model}); "
                              f"{what} has {layers}: apply it to the model it was made from")
    rec = plan.base_config or {}
    if not rec or not now:
        return  # a plan written before base_config was recorded: only the layer count can be checked
    diffs = [f"{key.replace('_', ' ')} {now[key]!r} instead of {rec[key]!r}"
             for key in ("architecture", "hidden_size", "vocab_size")
             if rec.get(key) is not None and now.get(key) is not None and rec[key] != now[key]]
    if diffs:
        msg = (f"{what} is not the base model the plan was made from ({plan.base_model}): {', '.join(diffs)}; give "
               "the plan's base model, or set {force} to apply it anyway")
    elif rec.get("config_sha256") and rec["config_sha256"] != now.get("config_sha256"):
        msg = (f"{what} has another config than the base model the plan was made from ({plan.base_model}): the same "
               f"architecture, sizes and layer count, but config sha256 {now['config_sha256'][:12]} instead of "
               f"{rec['config_sha256'][:12]}; give the plan's base model, or set {{force}} if it is the same model")
    else:
        return
    if not force:
        raise StreamlineError(msg, mentions=("force",))
    import warnings

    from .errors import plain

    warnings.warn(plain(msg.split("; give")[0]) + " (applied anyway: force)", stacklevel=3)


def apply_plan(model: Any, plan: StreamlinePlan, *, force: bool = False, **kwargs: Any) -> Any:
    """Apply every operation of ``plan`` to ``model`` (in place) and return it.

    ``model`` must be the plan's base model: its layer count must match, and so must its architecture, hidden size,
    vocabulary and config hash where the plan recorded them (``force=True`` applies it despite those).
    """
    from .architecture import num_layers

    plan.validate()
    if num_layers(model) != plan.num_layers_before:
        raise StreamlineError(
            f"the plan is for a model with {plan.num_layers_before} layers ({plan.base_model}); this one has {num_layers(model)}"
        )
    check_plan_base(plan, model, force=force)
    state: dict[str, Any] = {"current": list(range(plan.num_layers_before)),  # original index of each current slot
                             "attachments": plan.attachments}  # binary files beside the plan (e.g. linear maps)
    for op in plan.operations:
        model = op.apply(model, state, **kwargs)
    return model


def _removed_layers(self: StreamlinePlan) -> list[int]:
    """Original indices of every layer that is gone (removed, merged away or replaced): from the operations."""
    return self._removed()


def _set_removed_layers(self: StreamlinePlan, layers: Iterable[Any]) -> None:
    self._check_removed(layers)


# a derived attribute; the dataclass's ``removed_layers`` init argument (a format-1 plan's) is checked against it
StreamlinePlan.removed_layers = property(_removed_layers, _set_removed_layers)  # type: ignore[assignment]
