"""The ``replace`` workflow (``hf-streamline replace``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.replace.run(arguments)``). LLM-Streamline -- replace the most redundant block by one trained module."""

from __future__ import annotations

import copy
from typing import Any

from ..errors import mentioning
from ..training.checkpoints import checkpoint_plan, keep_checkpoints_on_failure
from .common import (Say, note, calibration_from_args, check_calibration_args, check_text_args, load_from_args, model_layer_count,
                     model_name, preflight_model)


@keep_checkpoints_on_failure("replace")
def run(args: Any, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
    from ..errors import StreamlineError
    from ..perplexity import evaluate_perplexity
    from ..replacement import ReplacementOptions, get_kind, save_replaced, streamline
    from ..training import StreamlineTrainingArguments
    from ..utils import check_output_dir, is_main_process

    if getattr(get_kind(args.replacement), "fitted", False):  # linear: training-free, fitted on the calibration
        from .replace_linear import run_linear

        return run_linear(args, say)
    if args.block_size is None:
        raise StreamlineError("required: the number of layers the module replaces (the paper: 9)",
                              argument="block_size")
    say = say if is_main_process() else (lambda *a, **k: None)  # under `accelerate launch`: one copy of each line
    check_output_dir(args.output, args.overwrite)  # refuse before any long work
    train_out, resume = checkpoint_plan(args)
    get_kind(args.replacement)
    if args.block_start is None and not args.calibration:
        raise StreamlineError("needed to choose the block (or name it with {block_start})", argument="calibration",
                              mentions=("block_start",))
    # everything that needs no weights is checked before the model loads
    from ..replacement.api import check_kd_top_k, validate_block
    from ..validation import check_data_source, text_path

    check_calibration_args(args)
    check_kd_top_k(args.kd_top_k, args.objective, args.kl_weight)
    with mentioning("train_data"):
        check_data_source(args.train_data, "{train_data}")
    check_text_args(args, "eval_text")
    L = model_layer_count(preflight_model(args))
    if L is not None:
        validate_block(L, args.block_start, args.block_size)
    model, tok = load_from_args(args)
    calib = calibration_from_args(args, tok)

    def ppl(m) -> float | None:
        if args.eval_text:
            return evaluate_perplexity(m, tok, text_path(args.eval_text), seq_len=args.seq_len, max_tokens=args.ppl_tokens,
                                       batch_size=args.batch_size)
        if calib is not None:
            from ..scores.perplexity import calibration_perplexity

            return calibration_perplexity(m, calib, args.batch_size)
        return None

    targs = StreamlineTrainingArguments(
        output_dir=str(train_out), objective=args.objective, kl_weight=args.kl_weight, kd_top_k=args.kd_top_k,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps if args.epochs is None else -1, num_train_epochs=args.epochs or 1.0,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, lr_scheduler_type="cosine", warmup_steps=min(20, max(args.max_steps // 10, 0)),
        save_strategy="steps" if args.save_steps else "no", save_steps=args.save_steps or 500,
        eval_strategy="no", seed=args.seed, logging_steps=max(1, min(20, (args.max_steps or 100) // 10)),
        use_cpu=(args.device == "cpu"))
    options = ReplacementOptions(width=args.width, init=args.init)
    model, plan = streamline(model, tok, block_size=args.block_size, replacement=args.replacement, calibration=calib,
                             block_start=args.block_start, train_data=args.train_data, training_args=targs,
                             options=options, activations=args.activations, train_seq_len=args.train_seq_len,
                             max_train_windows=args.max_train_windows, eval_windows=args.eval_windows,
                             cache_dir=args.cache_dir, batch_size=args.batch_size, base_model=model_name(args),
                             resume_from_checkpoint=resume, measure=ppl if args.eval_text or calib is not None else None,
                             measured_on=args.eval_text or "calibration")
    start, n = plan.extra["replacement"]["start"], plan.extra["replacement"]["block_size"]
    say(f"chosen block: layers {start}..{start + n - 1} ({n} of {plan.num_layers_before})"
          + (" by block_cosine" if plan.metric else " (given)"))
    p = plan.evaluation.get("perplexity")
    if p:
        say(f"perplexity on {'eval text' if args.eval_text else 'calibration'}: dense {p['dense']:.3f} | block removed "
            f"{p['removed']:.3f} | {args.replacement} {p['replaced']:.3f}")
    out = save_replaced(model, tok, plan, args.output, overwrite=args.overwrite)
    kind = "plain " + type(model).__name__ if get_kind(args.replacement).plain_checkpoint else \
        "StreamlineForCausalLM (remote code included; loads with trust_remote_code=True without hf_streamline)"
    say(f"saved a {kind} checkpoint with {plan.num_layers_after} layers to {out}")
    return 0
