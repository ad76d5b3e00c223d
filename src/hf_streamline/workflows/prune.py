"""The ``prune`` workflow (``hf-streamline prune``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.prune.run(arguments)``). Score, choose and remove layers; save a plain checkpoint + plan; PPL before/after."""

from __future__ import annotations

import copy
from typing import Any

from .common import (Say, note, calibration_from_args, check_calibration_args, check_text_args, load_from_args, model_layer_count,
                     model_name, preflight_model)


def run(args: Any, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
    from ..errors import StreamlineError
    from ..plan import StreamlinePlan
    from ..pruning import prune, remove_layers, save_pruned
    from ..scores import get_scorer
    from ..selection import Target
    from ..utils import check_output_dir, versions

    check_output_dir(args.output, args.overwrite)  # refuse before any long work
    from ..selection import check_count, layers_for_target, protected_set
    from ..validation import check_layer_indices, parse_layer_list, text_path

    if args.search_samples is not None and args.selection != "search":
        raise StreamlineError("is used only when {selection} is 'search'", argument="search_samples", value=args.search_samples,
                              mentions=("selection",))
    if args.unit != "layer" or args.selection == "search" or (args.layers and "." in args.layers):
        return run_units(args, say)
    args.metric = args.metric or "block_influence"
    layers = parse_layer_list(args.layers) if args.layers is not None else None
    if args.layers is None:
        scorer = get_scorer(args.metric)
        target = Target(layers=args.remove, ratio=args.ratio, param_ratio=args.param_ratio)
        if scorer.needs_calibration and not args.calibration:
            raise StreamlineError("scores layers on data: pass {calibration} (a file, or dataset:NAME[:CONFIG]:SPLIT), "
                                  "or use a data-free metric such as magnitude", argument="metric", value=args.metric,
                                  mentions=("calibration",))
    if args.block and args.iterative:
        raise StreamlineError("cannot be combined with {iterative}", argument="block", mentions=("iterative",))
    _check_fold(args)
    # everything that needs no weights is checked before the model loads
    check_calibration_args(args)
    check_text_args(args, "eval_text")
    L = model_layer_count(preflight_model(args))
    if L is not None:
        if layers is not None:
            check_layer_indices(layers, L)
        else:
            k = layers_for_target(target, [0] * L)
            try:
                if k is not None:
                    check_count(k, L, len(protected_set(L, args.protect_first, args.protect_last)))
            except StreamlineError as exc:
                if args.ratio is None:
                    raise
                raise StreamlineError(f"means removing {k} of {L} layers, but {exc.args[0]}", argument="ratio",
                                      value=args.ratio, mentions=exc.mentions) from None
    model, tok = load_from_args(args)
    calib = calibration_from_args(args, tok)
    eval_source = text_path(args.eval_text)
    ppl = _perplexity(args, tok, calib, eval_source)
    before = ppl(model)
    if args.layers is not None:
        from ..architecture import num_layers

        from ..plan import base_config_record

        plan = StreamlinePlan(base_model=model_name(args), num_layers_before=num_layers(model), method="remove",
                              selection="user", calibration=calib.recipe() if calib else None, versions=versions(),
                              base_config=base_config_record(model))
        from ..operations import RemoveOp

        remove_layers(model, layers)
        plan.operations.append(RemoveOp(layers=sorted(set(layers))))
    else:
        selection = "block" if args.block else ("iterative" if args.iterative else "layers")
        model, plan = prune(model, metric=args.metric, target=target, calibration=calib, selection=selection,
                            step=args.step, protect_first=args.protect_first, protect_last=args.protect_last,
                            batch_size=args.batch_size, seed=args.seed, options={"all_tokens": args.all_tokens},
                            base_model=model_name(args))
    model, plan = _maybe_fold(args, model, plan, calib, say)
    after = ppl(model)
    which = "eval text" if eval_source else "calibration"
    plan.evaluation["perplexity"] = {"text": args.eval_text or "calibration", "before": before, "after": after}
    say(f"removed layers ({len(plan.removed_layers)} of {plan.num_layers_before}): {plan.removed_layers}")
    if before is not None:
        say(f"perplexity on {which}: {before:.3f} -> {after:.3f}")
    extra = {}
    from ..scores.base import ScoreResult

    plot_scores = {m: ScoreResult.from_dict(s) for m, s in plan.scores.items()}

    def chart(folder) -> None:  # inside the staging folder: the output is never without its chart
        if plot_scores:
            from ..plotting import plot_layer_scores

            plot_layer_scores(plot_scores, args.plot or str(folder / "scores.png"),
                              title=f"{plan.metric} on {plan.base_model}", highlight=plan.removed_layers)

    out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite, extra_files=extra, write_more=chart)
    say(f"saved a plain {type(model).__name__} checkpoint with {plan.num_layers_after} layers to {out}")
    return 0


def _check_fold(args: Any) -> None:
    from ..errors import StreamlineError

    if args.fold != "none" and not args.calibration:
        raise StreamlineError("fits its maps on calibration data: pass {calibration}", argument="fold", value=args.fold,
                              mentions=("calibration",))
    if args.fold != "none" and args.layers is not None:
        raise StreamlineError("does not take {layers}: for blocks you name, fold them with the linear replacement "
                              "(`hf-streamline replace --replacement linear --layers A-B,C-D`; Python: "
                              "`hf_streamline.replace_linear(model, calibration, layers='A-B,C-D')`)", argument="fold",
                              value=args.fold, mentions=("layers",))


def _maybe_fold(args: Any, model, plan, calib, say: Say = note):
    """``--fold linear``: the removal chosen, the unpruned model is loaded again and each removed run folded."""
    if args.fold == "none":
        return model, plan
    from ..replacement.linear import fold_removal

    del model
    fresh, _ = load_from_args(args)
    model, plan = fold_removal(fresh, calib, plan, batch_size=args.batch_size, base_model=model_name(args))
    for op in plan.operations:
        layers = op["layers"]
        state = "folded into layer %d" % op["fold_into"] if op["folded"] else "removed without a map (no gain)"
        say(f"fold: block {layers[0]}..{layers[-1]} -> {state}")
    return model, plan


def _perplexity(args: Any, tok, calib, eval_source):
    """The perplexity ``prune`` prints before and after: on ``--eval-text`` if given, else on the calibration."""
    from ..perplexity import evaluate_perplexity

    def ppl(model) -> float | None:
        if eval_source:
            return evaluate_perplexity(model, tok, eval_source, seq_len=args.seq_len, max_tokens=args.ppl_tokens,
                                       batch_size=args.batch_size)
        if calib is not None:
            from ..scores.perplexity import calibration_perplexity

            return calibration_perplexity(model, calib, args.batch_size)
        return None

    return ppl


def run_units(args: Any, say: Say = note) -> int:
    """``prune --unit attention|mlp|sublayer`` or ``--selection search``: remove units chosen by scores or by the
    KL search; a plain checkpoint when only whole layers go (or ``--export zeroed``), else a StreamlineForCausalLM."""
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
    from ..errors import StreamlineError
    from ..plan import StreamlinePlan, base_config_record
    from ..pruning import prune_units, save_pruned
    from ..sublayers import Unit, check_units, record_removal, remove_units
    from ..unit_search import SearchConfig
    from ..utils import check_output_dir, versions
    from ..validation import text_path

    check_output_dir(args.output, args.overwrite)
    if args.block or args.iterative:
        raise StreamlineError(f"{{block}}/{{iterative}} choose whole layers by scores; they do not combine with {{unit}} "
                              f"{args.unit!r} or {{selection}} {args.selection!r}",
                              mentions=("block", "iterative", "unit", "selection"))
    if args.layers is None and args.remove is None and args.param_ratio is None and args.ratio is None:
        raise StreamlineError("give {remove} K (units), or {param_ratio} R with {selection} 'search'", argument="unit",
                              value=args.unit, mentions=("remove", "param_ratio", "selection"))
    config = SearchConfig(fitness=args.fitness, top_k=args.search_top_k or None, generations=args.generations,
                          offspring=args.offspring, budget_evals=args.budget_evals, seed=args.seed,
                          greedy_candidates=args.greedy_candidates, samples=args.search_samples,
                          batch_size=args.batch_size) if args.selection == "search" else None
    _check_fold(args)
    if args.fold != "none" and (args.unit != "layer" or (args.layers and "." in args.layers)):
        raise StreamlineError(f"replaces removed whole layers; it does not combine with {{unit}} {args.unit!r} or "
                              "sub-block units", argument="fold", value=args.fold, mentions=("unit",))
    check_calibration_args(args)
    check_text_args(args, "eval_text")
    units = [Unit.parse(t) for t in args.layers.split(",") if t.strip()] if args.layers is not None else None
    model_config = preflight_model(args)
    L = model_layer_count(model_config)
    if args.ratio is not None:  # a fraction of the units: of the layers (or of the sub-blocks, two per layer)
        from ..selection import ratio_to_count

        if args.unit != "layer":
            raise StreamlineError(f"counts whole layers; with {{unit}} {args.unit!r} give {{remove}} K (units) or "
                                  "{param_ratio} R", argument="ratio", value=args.ratio,
                                  mentions=("unit", "remove", "param_ratio"))
        if L is None:
            raise StreamlineError("needs the model's layer count, which its config does not give; use {remove} K",
                                  argument="ratio", value=args.ratio, mentions=("remove",))
        if not 0 < args.ratio < 1:
            raise StreamlineError("give a fraction of the layers in (0, 1), e.g. 0.25", argument="ratio", value=args.ratio)
        args.remove = ratio_to_count(args.ratio, L)
    if model_config is not None and (args.unit != "layer" or any(u.kind != "layer" for u in units or [])):
        from ..architecture import check_separable_sublayers

        check_separable_sublayers(model_config)  # before the weights load
    if units is not None and L is not None:
        bad = [u for u in units if not 0 <= u.layer < L]
        if bad:
            raise StreamlineError(f"unit {bad[0]} is out of range: the model has layers 0..{L - 1}")
    if units is None and not args.calibration:
        raise StreamlineError(f"with {{selection}} {args.selection!r}, chooses on data: pass {{calibration}}",
                              argument="unit", value=args.unit, mentions=("selection", "calibration"))
    model, tok = load_from_args(args)
    calib = calibration_from_args(args, tok)
    eval_source = text_path(args.eval_text)
    ppl = _perplexity(args, tok, calib, eval_source)
    before = ppl(model)
    if units is not None:
        from ..architecture import num_layers

        units = check_units(model, units)
        plan = StreamlinePlan(base_model=model_name(args), num_layers_before=num_layers(model),
                              method="remove_sublayer", selection="user", versions=versions(),
                              calibration=calib.recipe() if calib else None, base_config=base_config_record(model))
        model = remove_units(model, units, export=args.export)
        record_removal(plan, units, args.export)
        plan.extra["unit"] = args.unit
    else:
        model, plan = prune_units(model, unit=args.unit, count=args.remove, param_ratio=args.param_ratio,
                                  calibration=calib, selection=args.selection, metric=args.metric, search=config,
                                  export=args.export, batch_size=args.batch_size, protect_first=args.protect_first,
                                  protect_last=args.protect_last, base_model=model_name(args))
    model, plan = _maybe_fold(args, model, plan, calib, say)
    after = ppl(model)
    plan.evaluation["perplexity"] = {"text": args.eval_text or "calibration", "before": before, "after": after}
    say(f"removed units ({len(plan.extra['removed_units'])}): {', '.join(plan.extra['removed_units'])}")
    if "search" in plan.extra:
        rec = plan.extra["search"]
        say(f"search: {rec['fitness']} {rec['greedy']['fitness']:.4f} (greedy) -> {rec['best_fitness']:.4f} after "
              f"{rec['evolution']['generations']} generations; {rec['trials']} candidates, "
              f"{rec['layer_evaluations']:,} layer evaluations, {rec['seconds']:.0f} s")
    if before is not None:
        say(f"perplexity on {'eval text' if eval_source else 'calibration'}: {before:.3f} -> {after:.3f}")
    from ..scores.base import ScoreResult

    scores = {m: ScoreResult.from_dict(s) for m, s in plan.scores.items()}
    removed = [Unit.parse(u) for u in plan.extra["removed_units"]]

    def chart(folder) -> None:  # inside the staging folder: the output is never without its chart
        from ..plotting import plot_layer_scores, plot_unit_search

        title = f"{plan.metric} on {plan.base_model}"
        if scores:
            marks = {m: [u.layer for u in removed if u.kind in ("layer", m.rsplit("_", 1)[-1])] for m in scores}
            plot_layer_scores(scores, args.plot or str(folder / "scores.png"), title=title, highlight_by_metric=marks)
        else:
            plot_unit_search(plan.extra["removed_units"], plan.num_layers_before, args.plot or str(folder / "units.png"),
                             search=plan.extra.get("search"), title=title)

    out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite, write_more=chart)
    kind = "plain " + type(model).__name__ if type(model).__name__ != "StreamlineForCausalLM" else \
        "StreamlineForCausalLM (load with AutoModelForCausalLM after `import hf_streamline`, or trust_remote_code=True)"
    say(f"saved a {kind} checkpoint to {out}")
    return 0
