"""``hf-streamline prune``: score, choose and remove layers; save a plain checkpoint + plan; PPL before/after."""

from __future__ import annotations

import argparse

from .common import (add_base_model_arg, add_calibration_args, add_model_args, add_output_args, calibration_from_args,
                     check_calibration_args, check_text_args, load_from_args, model_layer_count, model_name,
                     preflight_model)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..scores import SCORERS

    p = sub.add_parser(name, help="remove the least important decoder layers and save a plain checkpoint")
    add_model_args(p)
    add_base_model_arg(p)
    add_calibration_args(p)
    p.add_argument("--method", "--metric", dest="method", default="block_influence",
                   help=f"metric that chooses the layers: {', '.join(sorted(SCORERS))} (default block_influence)")
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--remove", type=int, help="number of layers to remove")
    t.add_argument("--ratio", type=float, help="fraction of layers to remove, in (0, 1)")
    t.add_argument("--param-ratio", type=float, help="fraction of parameters to remove, in (0, 1)")
    t.add_argument("--layers", help="explicit comma-separated layer indices to remove (no scoring)")
    p.add_argument("--block", action="store_true", help="remove the best contiguous block instead of scattered layers")
    p.add_argument("--iterative", action="store_true", help="re-score after every --step removals")
    p.add_argument("--step", type=int, default=1, help="layers removed per iterative step (default 1)")
    p.add_argument("--protect-first", type=int, default=0, help="never remove the first N layers")
    p.add_argument("--protect-last", type=int, default=0, help="never remove the last N layers")
    p.add_argument("--all-tokens", action="store_true", help="angular: average over all tokens instead of the last")
    p.add_argument("--eval-text", default=None, help="text file for perplexity before/after (default: the calibration)")
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluate perplexity on at most this many tokens")
    p.add_argument("--plot", default=None, help="also write a PNG chart of the scores here (default: into the output)")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import StreamlineError
    from ..perplexity import evaluate_perplexity
    from ..plan import StreamlinePlan
    from ..pruning import prune, remove_layers, save_pruned
    from ..scores import get_scorer
    from ..selection import Target
    from ..utils import check_output_dir, versions

    check_output_dir(args.output, args.overwrite)  # refuse before any long work
    from ..selection import check_count, layers_for_target, protected_set
    from ..validation import check_layer_indices, parse_layer_list, text_path

    layers = parse_layer_list(args.layers) if args.layers is not None else None
    if args.layers is None:
        scorer = get_scorer(args.method)
        target = Target(layers=args.remove, ratio=args.ratio, param_ratio=args.param_ratio)
        if scorer.needs_calibration and not args.calibration:
            raise StreamlineError(f"--method {args.method} scores layers on data: pass --calibration FILE (or "
                                  "dataset:NAME[:CONFIG]:SPLIT), or use a data-free metric such as magnitude")
    if args.block and args.iterative:
        raise StreamlineError("--block and --iterative cannot be combined")
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
                raise StreamlineError(f"--ratio {args.ratio} means removing {k} of {L} layers, but "
                                      f"{str(exc).split(': ', 1)[1]}") from None
    model, tok = load_from_args(args)
    calib = calibration_from_args(args, tok)
    eval_source = text_path(args.eval_text)
    def ppl() -> float | None:
        if eval_source:
            return evaluate_perplexity(model, tok, eval_source, seq_len=args.seq_len, max_tokens=args.eval_tokens,
                                       batch_size=args.batch_size)
        if calib is not None:
            from ..scores.perplexity import calibration_perplexity

            return calibration_perplexity(model, calib, args.batch_size)
        return None

    before = ppl()
    if args.layers is not None:
        from ..architecture import num_layers

        from ..plan import base_config_record

        plan = StreamlinePlan(base_model=model_name(args), num_layers_before=num_layers(model), method="remove",
                              selection="user", calibration=calib.recipe() if calib else None, versions=versions(),
                              base_config=base_config_record(model))
        remove_layers(model, layers)
        plan.removed_layers = sorted(set(layers))
        plan.operations.append({"type": "remove", "layers": plan.removed_layers})
    else:
        selection = "block" if args.block else ("iterative" if args.iterative else "layers")
        model, plan = prune(model, metric=args.method, target=target, calibration=calib, selection=selection,
                            step=args.step, protect_first=args.protect_first, protect_last=args.protect_last,
                            batch_size=args.batch_size, seed=args.seed, options={"all_tokens": args.all_tokens},
                            base_model=model_name(args))
    after = ppl()
    which = "eval text" if eval_source else "calibration"
    plan.evaluation["perplexity"] = {"text": args.eval_text or "calibration", "before": before, "after": after}
    print(f"removed layers ({len(plan.removed_layers)} of {plan.num_layers_before}): {plan.removed_layers}")
    if before is not None:
        print(f"perplexity on {which}: {before:.3f} -> {after:.3f}")
    extra = {}
    from ..scores.base import ScoreResult

    plot_scores = {m: ScoreResult.from_dict(s) for m, s in plan.scores.items()}

    def chart(folder) -> None:  # inside the staging folder: the output is never without its chart
        if plot_scores:
            from ..plotting import plot_layer_scores

            plot_layer_scores(plot_scores, args.plot or str(folder / "scores.png"),
                              title=f"{plan.metric} on {plan.base_model}", highlight=plan.removed_layers)

    out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite, extra_files=extra, write_more=chart)
    print(f"saved a plain {type(model).__name__} checkpoint with {plan.num_layers_after} layers to {out}")
    return 0
