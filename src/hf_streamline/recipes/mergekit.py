"""Export a plain layer-removal plan as a mergekit ``passthrough`` recipe (for users of that tool)."""

from __future__ import annotations

from ..errors import StreamlineError
from ..plan import StreamlinePlan


def kept_ranges(kept: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of kept layers as half-open ``[start, end)`` ranges (mergekit's ``layer_range``)."""
    from ..utils import contiguous_runs

    return [(run[0], run[-1] + 1) for run in contiguous_runs(kept)]


def mergekit_passthrough_yaml(plan: StreamlinePlan, model: str | None = None, dtype: str = "bfloat16") -> str:
    """The mergekit YAML that rebuilds ``plan``'s model by slicing the base model (removal plans only)."""
    import yaml

    plan.validate()  # out-of-range or missing layer indices would give a recipe for another model
    other = sorted({op.get("type") for op in plan.operations} - {"remove"})
    if other:
        raise StreamlineError(f"only plain layer removal can be written as a mergekit passthrough recipe; this plan also "
                              f"has {other} operations")
    name = model or plan.base_model
    slices = [{"sources": [{"model": name, "layer_range": [a, b]}]} for a, b in kept_ranges(plan.kept_layers)]
    doc = {"slices": slices, "merge_method": "passthrough", "dtype": dtype}
    header = (f"# mergekit passthrough recipe written by hf-streamline: keeps {len(plan.kept_layers)} of "
              f"{plan.num_layers_before} layers of {name}\n# removed: {plan.removed_layers}\n")
    return header + yaml.safe_dump(doc, sort_keys=False)
