"""``hf-streamline replace --replacement linear``: training-free block replacement (ReplaceMe).

A linear map fitted on the calibration activations is folded into the MLP output projection of the layer before the
block, and the block is removed; the output is a plain checkpoint of the base architecture.  No ``--train-data``.
Its options are declared with ``replace``'s (``hf_streamline.arguments.replace.ReplaceArguments``, the "linear"
group); ``replace`` hands the run to :func:`run_linear`.
"""

from __future__ import annotations

import shlex
from typing import Any

from .common import Say, note


def _command_line(args: Any) -> str:
    """The command as typed, without secrets (``cli.main`` records it as ``args.argv``)."""
    argv = getattr(args, "argv", None) or []
    return "hf-streamline " + " ".join(shlex.quote(a) for a in argv) if argv else ""


def run_linear(args: Any, say: Say = note) -> int:
    import copy

    from ..architecture import keep_only_layers
    from ..errors import StreamlineError
    from ..perplexity import evaluate_perplexity
    from ..replacement import save_replaced
    from ..replacement.linear import replace_linear
    from ..utils import check_output_dir
    from .common import calibration_from_args, load_from_args, model_name

    check_output_dir(args.output, args.overwrite)  # refuse before any long work
    if not args.calibration:
        raise StreamlineError("fits its map on calibration data: pass {calibration} (no {train_data} is needed)",
                              argument="replacement", value="linear", mentions=("calibration", "train_data"))
    if args.train_data:
        raise StreamlineError("is training-free: it takes no {train_data} (the map is fitted on {calibration})",
                              argument="replacement", value="linear", mentions=("train_data", "calibration"))
    layers = args.layers
    if args.block_size is None and not layers:
        raise StreamlineError("required unless {layers} 'A-B[,C-D]' names the blocks", argument="block_size",
                              mentions=("layers",))
    if args.block_start is not None:
        if layers:
            raise StreamlineError("give the block with {layers} 'A-B' or {block_start}, not both",
                                  mentions=("layers", "block_start"))
        layers = f"{args.block_start}-{args.block_start + args.block_size - 1}"
    model, tok = load_from_args(args)
    calib = calibration_from_args(args, tok)

    def ppl(m) -> float | None:
        if not args.eval_text:
            return None
        return evaluate_perplexity(m, tok, args.eval_text, seq_len=args.seq_len, max_tokens=args.ppl_tokens,
                                   batch_size=args.batch_size)

    dense_ppl = ppl(model)
    dense_copy = copy.deepcopy(model) if args.eval_text else None
    model, plan = replace_linear(
        model, calib, block_size=args.block_size, blocks=args.blocks, layers=layers, solver=args.solver,
        select=args.select, skip_first_tokens=args.skip_first_tokens, ridge=args.ridge,
        heldout_samples=args.heldout_samples, on_no_gain=args.on_no_gain, cosine_epochs=args.cosine_epochs,
        cosine_lr=args.cosine_lr, cosine_token_batch=args.cosine_token_batch, activations=args.activations,
        cache_dir=args.cache_dir, seed=args.seed, batch_size=args.batch_size, base_model=model_name(args))
    how = "given" if plan.selection == "user" else f"chosen by {args.select}"
    for op in plan.operations:
        layers_ = op["layers"]
        line = (f"block {layers_[0]}..{layers_[-1]} ({len(layers_)} layers, {how}): {op['solver']} map, relative "
                f"residual {op['residual']:.4g} (plain removal {op['removal_residual']:.4g})")
        held = op.get("heldout_perplexity")
        if held:
            line += f"; held-out calibration perplexity: removal {held['removed']:.4g}, fold {held['folded']:.4g}"
        line += (f" -> folded into layer {op['fold_into']} ({', '.join(op['folded_into'])})" if op["folded"]
                 else " -> NOT folded: the block was removed without the map (the fold did not help)")
        say(line)
    if dense_copy is not None:
        removed_ppl = ppl(keep_only_layers(dense_copy, plan.kept_layers))
        del dense_copy
        final_ppl = ppl(model)
        say(f"perplexity on eval text: dense {dense_ppl:.3f} | same blocks removed {removed_ppl:.3f} | "
              f"linear {final_ppl:.3f}")
        plan.evaluation["perplexity"] = {"text": args.eval_text, "dense": dense_ppl, "removed": removed_ppl,
                                         "replaced": final_ppl, "before": dense_ppl, "after": final_ppl}
    cmd = _command_line(args)
    if cmd:
        plan.extra["command"] = cmd
    out = save_replaced(model, tok, plan, args.output, overwrite=args.overwrite)
    maps = " and the maps beside the plan (streamline_linear_maps.safetensors)" if plan.attachments else ""
    say(f"saved a plain {type(model).__name__} checkpoint with {plan.num_layers_after} layers to {out}{maps}")
    return 0
