"""The ``score`` workflow (``hf-streamline score``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.score.run(arguments)``). Per-layer (and per-block) importance scores as a table, JSON and a bar chart."""

from __future__ import annotations

import copy
import json
from typing import Any

from .common import (Say, note, calibration_from_args, check_calibration_args, join_process_group, load_from_args,
                     model_layer_count, model_name, preflight_model)


def run(args: Any, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
    from ..architecture import num_layers
    from ..scores import compute_scores, parse_metrics
    from ..utils import versions

    metrics = parse_metrics(args.metric)  # fail on a bad name before loading anything
    from ..errors import StreamlineError
    from ..scores import get_scorer

    need_data = [m for m in metrics if get_scorer(m).needs_calibration]
    if need_data and not args.calibration:
        raise StreamlineError("scores layers on data: pass {calibration} (a file, or dataset:NAME[:CONFIG]:SPLIT), or "
                              "use a data-free metric such as magnitude", argument="metric", value=",".join(need_data),
                              mentions=("calibration",))
    check_calibration_args(args)
    L0 = model_layer_count(preflight_model(args))
    too_big = [n for n in (args.block_size or []) if L0 is not None and n >= L0]
    if too_big:
        raise StreamlineError(f"the model has {L0} layers; give a block size in 1..{L0 - 1}", argument="block_size",
                              value=too_big[0])
    from ..utils import process_rank

    join_process_group(args)  # accelerate launch: one process per device, the calibration batches shared out
    model, tok = load_from_args(args)
    calib = calibration_from_args(args, tok)
    L = num_layers(model)
    sizes = args.block_size or list(range(1, L))
    results = compute_scores(model, metrics, calib, batch_size=args.batch_size, block_sizes=sizes, seed=args.seed,
                             options={"all_tokens": args.all_tokens, "norm": args.norm})
    header = "layer  " + "  ".join(f"{m:>16}" for m in metrics)
    say(header)
    for i in range(L):
        row = []
        for m in metrics:
            vals = results[m].per_layer
            row.append(f"{vals[i]:>16.6g}" if vals is not None else f"{'-':>16}")
        say(f"{i:>5}  " + "  ".join(row))
    for m in metrics:
        for n in (args.block_size or []):
            imp = results[m].block_importance(n)
            best = min(range(len(imp)), key=lambda l: (imp[l], l))
            say(f"{m}: best block of {n}: layers {best}..{best + n - 1}")
    from ..utils import is_main_process

    if args.output and is_main_process():
        payload = {"model": model_name(args), "num_layers": L, "calibration": calib.recipe() if calib else None,
                   "versions": versions(), "processes": process_rank()[1], "scores": {m: r.to_dict() for m, r in results.items()}}
        from ..utils import write_text_atomic

        write_text_atomic(args.output, json.dumps(payload, indent=2) + "\n")
        say(f"scores written to {args.output}")
    if args.plot and is_main_process():
        from ..plotting import plot_layer_scores

        plot_layer_scores(results, args.plot, title=f"Layer importance: {model_name(args)}")
        say(f"chart written to {args.plot}")
    return 0
