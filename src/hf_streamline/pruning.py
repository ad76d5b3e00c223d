"""Score -> plan -> apply: the depth-pruning entry points of the Python API (the CLI calls these)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .architecture import check_causal_lm, keep_only_layers, layer_parameter_counts, num_layers
from .errors import StreamlineError
from .log import progress_bar
from .operations import RemoveOp
from .plan import StreamlinePlan, base_config_record, register_operation
from .scores import compute_scores, get_scorer
from .selection import (Target, layers_for_target, select_block, select_least_important, target_layer_count,
                        validate_layer_indices)
from .utils import atomic_output_dir, is_main_process, versions, wait_for_everyone

SELECTIONS = ("layers", "block", "iterative")


def remove_layers(model: Any, layers: Sequence[int]) -> Any:
    """Remove decoder layers ``layers`` (current indices) from ``model`` in place; the result is a plain checkpoint."""
    L = num_layers(model)
    gone = set(validate_layer_indices(layers, L))
    keep_only_layers(model, [i for i in range(L) if i not in gone])
    return model


@register_operation("remove")
def _apply_remove(model: Any, op: dict, state: dict, **_: Any) -> Any:
    current: list[int] = state["current"]
    missing = [o for o in op["layers"] if o not in current]
    if missing:
        raise StreamlineError(f"plan removes layer(s) {missing}, which an earlier operation already removed")
    positions = [current.index(o) for o in op["layers"]]
    remove_layers(model, positions)
    state["current"] = [o for o in current if o not in set(op["layers"])]
    return model


def _total_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def prune(model: Any, *, metric: str, target: Target, calibration: Any = None, selection: str = "layers",
          step: int = 1, protect_first: int = 0, protect_last: int = 0, batch_size: int = 8, seed: int = 0,
          options: dict | None = None, base_model: str | None = None, progress: bool = True) -> tuple[Any, StreamlinePlan]:
    """Choose layers with ``metric`` and remove them from ``model`` (in place).  Returns ``(model, plan)``.

    ``selection``: ``layers`` (the least important, anywhere), ``block`` (the best contiguous block) or
    ``iterative`` (remove ``step`` layers, re-score the pruned model, repeat until the target).
    """
    check_causal_lm(model)
    if selection not in SELECTIONS:
        raise StreamlineError(f"unknown; use one of {list(SELECTIONS)}", argument="selection", value=selection)
    scorer = get_scorer(metric)
    if scorer.needs_calibration and calibration is None:
        raise StreamlineError(f"the metric {metric!r} needs calibration data: pass it", argument="calibration")
    L = num_layers(model)
    name = base_model or getattr(model.config, "_name_or_path", "") or "unknown"
    plan = StreamlinePlan(base_model=name, num_layers_before=L, method="remove", metric=metric, selection=selection,
                          calibration=calibration.recipe() if calibration is not None else None, versions=versions(),
                          base_config=base_config_record(model))
    plan.extra["target"] = target.to_dict()
    if protect_first or protect_last:
        plan.extra["protect"] = {"first": protect_first, "last": protect_last}
    lp, total = layer_parameter_counts(model), _total_params(model)
    if selection in ("layers", "block"):
        n_for_blocks = layers_for_target(target, lp) if selection == "block" else None
        sizes = [n_for_blocks] if n_for_blocks else list(range(1, L))
        scores = compute_scores(model, [metric], calibration, batch_size=batch_size, block_sizes=sizes, seed=seed,
                                progress=progress, options=options)[metric]
        chooser = select_block if selection == "block" else select_least_important
        chosen = chooser(scores, target, lp, total, protect_first, protect_last)
        plan.scores[metric] = scores.to_dict()
        remove_layers(model, chosen)
        plan.operations.append(RemoveOp(layers=list(chosen)))
        return model, plan
    # iterative
    if step < 1:
        raise StreamlineError("must be >= 1", argument="step", value=step)
    goal = target_layer_count(target, lp, total)
    select_least_important(  # validates the count against the protected layers up front
        scores=_dummy_scores(L), target=Target(layers=goal), layer_params=lp, total_params=total,
        protect_first=protect_first, protect_last=protect_last)
    current = list(range(L))
    bar = progress_bar(total=goal, desc="iterative pruning", disable=not progress, leave=False)
    while len(current) > L - goal:
        k = min(step, len(current) - (L - goal))
        scores = compute_scores(model, [metric], calibration, batch_size=batch_size, seed=seed + len(plan.steps),
                                progress=False, options=options)[metric]
        # protection refers to the original first/last layers
        imp = scores.layer_importance()
        prot = set(range(protect_first)) | set(range(L - protect_last, L))
        order = sorted((i for i in range(len(current)) if current[i] not in prot), key=lambda i: (imp[i], i))
        chosen_pos = sorted(order[:k])
        chosen_orig = [current[i] for i in chosen_pos]
        remove_layers(model, chosen_pos)
        plan.steps.append({"step": len(plan.steps) + 1, "removed": chosen_orig, "scores": scores.to_dict(),
                           "layers_after": len(current) - k})
        plan.operations.append(RemoveOp(layers=chosen_orig))
        current = [o for o in current if o not in set(chosen_orig)]
        bar.update(k)
    bar.close()
    plan.scores[metric] = plan.steps[0]["scores"]
    return model, plan


def _dummy_scores(L: int):
    from .scores.base import ScoreResult

    return ScoreResult("index", per_layer=[float(i) for i in range(L)])


def write_optional_model_card(folder: Path, plan: StreamlinePlan, extra: dict[str, Any] | None = None,
                              name: str | None = None) -> None:
    """Write ``README.md`` (the model card) into ``folder``; a card that fails is a warning, never a lost model.

    ``name``: the model's final name; ``folder`` is usually the staging folder of the output, whose own name
    (``.NAME.tmp-XXXX``) must never title the card."""
    try:
        from .publishing import write_model_card
    except ImportError:  # pragma: no cover - publishing ships with the package
        return
    try:
        write_model_card(folder, plan=plan, extra=extra or {}, name=name)
    except Exception as exc:  # noqa: BLE001 - a card is optional; never lose the model for it
        import warnings

        warnings.warn(f"model card not written: {type(exc).__name__}: {exc}", stacklevel=2)


def output_name(output: str | os.PathLike) -> str:
    """The name of the output folder ``output`` (``out/``, ``.`` and ``..`` included), as cards title the model."""
    return Path(os.path.abspath(output)).name


def save_pruned(model: Any, tokenizer: Any, plan: StreamlinePlan, output: str | os.PathLike, overwrite: bool = False,
                extra_files: dict[str, str] | None = None, model_card: bool = False,
                card_extra: dict[str, Any] | None = None, write_more: Any = None) -> Path:
    """Write ``model`` (``save_pretrained``) + tokenizer + ``streamline_plan.json`` (+ the model card) atomically to
    ``output``; ``write_more(folder)`` adds files (charts, ...) inside the staging folder, before the move, so the
    output is complete or absent.  Under ``accelerate launch`` only the main process writes; the others wait."""
    if not is_main_process():
        wait_for_everyone()
        return Path(output)
    from .offload import save_model

    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        save_model(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        plan.save(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if write_more is not None:
            write_more(tmp)
        if model_card:
            write_optional_model_card(tmp, plan, card_extra, name=output_name(output))
    wait_for_everyone()
    return Path(output)


UNIT_SELECTIONS = ("scores", "search")


def prune_units(model: Any, *, unit: str, count: int | None = None, param_ratio: float | None = None,
                calibration: Any = None, selection: str = "scores", metric: str | None = None,
                search: Any = None, export: str = "streamline", batch_size: int = 8,
                protect_first: int = 0, protect_last: int = 0, base_model: str | None = None,
                progress: bool = True) -> tuple[Any, StreamlinePlan]:
    """Remove ``count`` units (or at least ``param_ratio`` of the parameters) of kind ``unit`` (``layer``,
    ``attention``, ``mlp`` or ``sublayer``), chosen by one-shot scores (``selection="scores"``: a layer metric for
    whole layers, LLM-Drop's ``drop_cosine`` for sub-blocks) or by the KL search (``selection="search"``,
    :mod:`hf_streamline.unit_search`).  Returns ``(model, plan)``; the model is a plain checkpoint when only whole
    layers go (or with ``export="zeroed"``), else a ``StreamlineForCausalLM``."""
    from .scores.base import ScoreResult
    from .scores.sublayer_cosine import METRIC as DROP_COSINE, sublayer_cosine
    from .selection import protected_set
    from .sublayers import EXPORTS, candidate_units, record_removal, remove_units
    from .unit_search import SearchConfig, search_units

    check_causal_lm(model)
    if selection not in UNIT_SELECTIONS:
        raise StreamlineError(f"unknown here; use one of {list(UNIT_SELECTIONS)}", argument="selection", value=selection)
    if export not in EXPORTS:
        raise StreamlineError(f"unknown; use one of {', '.join(EXPORTS)}", argument="export", value=export)
    if calibration is None:
        raise StreamlineError(f"choosing {unit} units needs calibration data: pass it", argument="calibration")
    L = num_layers(model)
    prot = protected_set(L, protect_first, protect_last)
    cands = [u for u in candidate_units(L, unit) if u.layer not in prot]
    name = base_model or getattr(model.config, "_name_or_path", "") or "unknown"
    plan = StreamlinePlan(base_model=name, num_layers_before=L, method="remove" if unit == "layer" else "remove_sublayer",
                          calibration=calibration.recipe() if hasattr(calibration, "recipe") else None,
                          versions=versions(), base_config=base_config_record(model), selection=selection)
    plan.extra["target"] = {"units": count} if count is not None else {"param_ratio": param_ratio}
    plan.extra["unit"] = unit
    if prot:
        plan.extra["protect"] = {"first": protect_first, "last": protect_last}
    if selection == "search":
        units, record = search_units(model, calibration, unit=unit, count=count, param_ratio=param_ratio,
                                     config=search or SearchConfig(batch_size=batch_size, progress=progress),
                                     candidates=cands)
        plan.metric = f"{record['fitness']}_search"
        plan.extra["search"] = record
    else:
        if param_ratio is not None:
            raise StreamlineError("a parameter budget for sub-layer units needs selection='search' (scores choose a unit "
                                  "count)", argument="param_ratio", value=param_ratio)
        if unit == "layer":
            metric = metric or "block_influence"
            scores = compute_scores(model, [metric], calibration, batch_size=batch_size, progress=progress)[metric]
            imp = scores.layer_importance()
            plan.scores[metric] = scores.to_dict()
            ranked = sorted(cands, key=lambda u: (imp[u.layer], u.layer))
        else:
            if metric not in (None, DROP_COSINE):
                raise StreamlineError(f"scores whole layers; sub-blocks are scored by {DROP_COSINE} (or use selection="
                                      "'search' with the KL fitness)", argument="metric", value=metric)
            metric = DROP_COSINE
            cos = sublayer_cosine(model, calibration, batch_size=batch_size, progress=progress)
            for kind in ("attention", "mlp"):
                plan.scores[f"{DROP_COSINE}_{kind}"] = ScoreResult(f"{DROP_COSINE}_{kind}", per_layer=cos[kind],
                                                                   higher_is_redundant=True).to_dict()
            ranked = sorted(cands, key=lambda u: (-cos[u.kind][u.layer], u.layer, u.kind))
        if not 1 <= int(count) < len(ranked):
            raise StreamlineError(f"choose between 1 and {len(ranked) - 1} of the {len(ranked)} {unit} units",
                                  argument="count", value=count)
        units = sorted(ranked[:int(count)])
        plan.metric = metric
    model = remove_units(model, units, export=export)
    record_removal(plan, units, export)
    return model, plan
