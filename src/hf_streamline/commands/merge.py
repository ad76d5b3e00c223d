"""``hf-streamline merge``: SLM sliding-window layer merging; saves a plain checkpoint + plan; PPL before/after."""

from __future__ import annotations

import argparse

from .common import (add_base_model_arg, add_calibration_args, add_model_args, add_output_args, add_ppl_tokens_arg,
                     calibration_from_args, check_calibration_args, check_text_args, load_from_args, model_layer_count, model_name,
                     preflight_model)

HELP = "merge runs of similar consecutive layers (SLM window search) into one layer each"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..options import MergeConfig
    from ..plugins import MERGE_RULES, OUTPUT_SIMILARITIES

    defaults = MergeConfig()

    p = sub.add_parser(name, help=HELP)
    add_model_args(p)
    add_base_model_arg(p)
    add_calibration_args(p, required=True)
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--threshold", type=float, help="similarity threshold in (0, 1] (the paper's mode)")
    t.add_argument("--remove", type=int, help="merge away exactly this many layers (threshold found by bisection)")
    t.add_argument("--ratio", type=float, help="merge away this fraction of the layers, in (0, 1)")
    p.add_argument("--rule", default=defaults.rule, choices=sorted(MERGE_RULES),
                   help="how a window's parameters become one layer: top_weights (what the authors' code computes), "
                        "rdsc (the papers' formula), average, drop (keep the bottom layer: plain removal of the "
                        f"window's other layers). Default: {defaults.rule}")
    p.add_argument("--similarity", default=defaults.similarity, choices=sorted(OUTPUT_SIMILARITIES),
                   help="what the search thresholds: logits_kl (exp(-mean KL) of the next-token distributions), "
                        "token_cosine (mean per-token cosine of the final outputs, first token left out), "
                        "output_cosine (the SLM paper: cosine of the flattened final outputs) or cka (linear CKA). "
                        f"Default: {defaults.similarity}")
    p.add_argument("--scoring", default=defaults.scoring, choices=["cumulative", "marginal"],
                   help="what the threshold judges: cumulative (the paper: the merged model's similarity to the "
                        "original) or marginal (the similarity a window keeps relative to the model before it, "
                        f"s_trial / s_current: the window's own cost). Default: {defaults.scoring}")
    p.add_argument("--skip-first-tokens", type=int, default=None, metavar="N",
                   help="leave the first N tokens of every calibration sequence out of the similarity "
                        "(default: the criterion's own: token_cosine 1, the others 0)")
    p.add_argument("--kl-topk", type=int, default=defaults.kl_topk, metavar="K",
                   help="logits_kl: cache the original model's K largest logits per token "
                        f"(0 = the full vocabulary, recomputed in every trial; default {defaults.kl_topk})")
    p.add_argument("--full-forwards", action="store_true",
                   help="do not record layer inputs: every trial runs the whole model (less memory, slower)")
    p.add_argument("--naive", action="store_true",
                   help="the released code's search: deep copy + full forward per trial (slow; for comparison)")
    p.add_argument("--eval-text", default=None, help="text file for perplexity before/after (default: the calibration)")
    add_ppl_tokens_arg(p)
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity before/after")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..architecture import num_layers
    from ..merging import MergeConfig, slm_merge
    from ..perplexity import evaluate_perplexity
    from ..pruning import save_pruned
    from ..utils import check_output_dir
    from ..validation import text_path

    check_output_dir(args.output, args.overwrite)  # refuse before any long work
    config = MergeConfig(threshold=args.threshold, remove=args.remove, ratio=args.ratio, rule=args.rule,
                         similarity=args.similarity, batch_size=args.batch_size,
                         skip_first_tokens=args.skip_first_tokens, kl_topk=args.kl_topk, scoring=args.scoring,
                         reuse_hidden=not args.full_forwards, naive=args.naive)
    # everything that needs no weights is checked before the model loads
    check_calibration_args(args)
    check_text_args(args, "eval_text")
    L = model_layer_count(preflight_model(args))
    if L is not None:
        config.target_count(L)
    model, tok = load_from_args(args)
    config.target_count(num_layers(model))  # validate the target against the model before calibration
    calib = calibration_from_args(args, tok)

    def ppl() -> float | None:
        if args.no_eval:
            return None
        if args.eval_text:
            return evaluate_perplexity(model, tok, text_path(args.eval_text), seq_len=args.seq_len,
                                       max_tokens=args.ppl_tokens, batch_size=args.batch_size)
        from ..scores.perplexity import calibration_perplexity

        return calibration_perplexity(model, calib, args.batch_size)

    before = ppl()
    model, plan = slm_merge(model, calib, config, base_model=model_name(args))
    after = ppl()
    info = plan.extra["merge"]
    plan.evaluation["perplexity"] = {"text": args.eval_text or "calibration", "before": before, "after": after}
    for w in info["windows"]:
        print(f"merged layers {w['layers'][0]}..{w['layers'][-1]} into {w['layers'][0]} "
              f"({info['similarity']} {w['similarity']:.4f}, {info['scoring']} score {w['score']:.4f})")
    if not info["windows"]:
        print("no window passed the threshold: nothing was merged")
    mode = f"target {info['target']} layers -> threshold {info['threshold']:.4f}" if info["mode"] == "target" else (
        f"threshold {info['threshold']}")
    print(f"rule {info['rule']}, similarity {info['similarity']} ({info['scoring']}), {mode}; removed {len(plan.removed_layers)} of {plan.num_layers_before} layers: "
          f"{plan.removed_layers}")
    ev = info["evaluations"]
    print(f"layer evaluations: {ev['total']} ({ev['mode']}); a naive deep-copy search: {ev['naive_total']} "
          f"({info['search_seconds']:.1f} s)")
    if before is not None:
        print(f"perplexity on {args.eval_text or 'calibration'}: {before:.3f} -> {after:.3f}")
    out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite)
    print(f"saved a plain {type(model).__name__} checkpoint with {plan.num_layers_after} layers to {out}")
    return 0
