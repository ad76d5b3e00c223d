"""``hf-streamline prune``: score, choose and remove layers; save a plain checkpoint + plan; PPL before/after."""

from __future__ import annotations

import argparse

from .common import (add_calibration_args, add_model_args, add_output_args, calibration_from_args, load_from_args,
                     model_name)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..scores import SCORERS

    p = sub.add_parser(name, help="remove the least important decoder layers and save a plain checkpoint")
    add_model_args(p)
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
    if args.layers is None:
        get_scorer(args.method)
        target = Target(layers=args.remove, ratio=args.ratio, param_ratio=args.param_ratio)
    if args.block and args.iterative:
        raise StreamlineError("--block and --iterative cannot be combined")
    model, tok = load_from_args(args)
    calib = calibration_from_args(args, tok)
    eval_source = args.eval_text
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

        layers = [int(x) for x in args.layers.split(",") if x.strip()]
        plan = StreamlinePlan(base_model=model_name(args), num_layers_before=num_layers(model), method="remove",
                              selection="user", calibration=calib.recipe() if calib else None, versions=versions())
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
    plan.evaluation["perplexity"] = {"text": eval_source or "calibration", "before": before, "after": after}
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
