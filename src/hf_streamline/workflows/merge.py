"""The ``merge`` workflow (``hf-streamline merge``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.merge.run(arguments)``). SLM sliding-window layer merging; saves a plain checkpoint + plan; PPL before/after."""

from __future__ import annotations

import copy
from typing import Any

from .common import (Say, note, calibration_from_args, check_calibration_args, check_text_args, load_from_args, model_layer_count,
                     model_name, preflight_model)


def run(args: Any, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
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
        say(f"merged layers {w['layers'][0]}..{w['layers'][-1]} into {w['layers'][0]} "
              f"({info['similarity']} {w['similarity']:.4f}, {info['scoring']} score {w['score']:.4f})")
    if not info["windows"]:
        say("no window passed the threshold: nothing was merged")
    mode = f"target {info['target']} layers -> threshold {info['threshold']:.4f}" if info["mode"] == "target" else (
        f"threshold {info['threshold']}")
    say(f"rule {info['rule']}, similarity {info['similarity']} ({info['scoring']}), {mode}; removed {len(plan.removed_layers)} of {plan.num_layers_before} layers: "
          f"{plan.removed_layers}")
    ev = info["evaluations"]
    say(f"layer evaluations: {ev['total']} ({ev['mode']}); a naive deep-copy search: {ev['naive_total']} "
          f"({info['search_seconds']:.1f} s)")
    if before is not None:
        say(f"perplexity on {args.eval_text or 'calibration'}: {before:.3f} -> {after:.3f}")
    out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite)
    say(f"saved a plain {type(model).__name__} checkpoint with {plan.num_layers_after} layers to {out}")
    return 0
