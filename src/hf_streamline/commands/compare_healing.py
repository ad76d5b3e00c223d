"""``hf-streamline compare-healing``: every healing method on one pruned model under the same token budget;
a table (markdown + JSON) of trainable parameters, wall time, peak memory, perplexity and task accuracy, and a chart."""

from __future__ import annotations

import argparse

from .common import add_model_args, add_output_args
from .heal import add_healing_args, data_from_args, data_sources, healing_config_from_args

HELP = "compare healing methods side by side under one token budget"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..options import COMPARE_METHODS as DEFAULT_METHODS

    p = sub.add_parser(name, help=HELP)
    add_model_args(p)
    p.add_argument("--teacher", default=None, help="the dense model (distill, and the reference row)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated method specs (default {','.join(DEFAULT_METHODS)}); also lora:R, "
                        "distill:lora, distill:partial:K")
    p.add_argument("--budget-tokens", type=int, required=True, help="training tokens per method (the same for all)")
    p.add_argument("--learning-rates", default=None,
                   help="learning rate per method, e.g. partial=3e-4,lora=1e-3,qlora=1e-3,distill=3e-4 (others: "
                        "--learning-rate or the method's default)")
    add_healing_args(p)
    e = p.add_argument_group("evaluation")
    e.add_argument("--ppl", action="append", default=[],
                   help="text file (or NAME=FILE) for perplexity; repeat for several (default: none)")
    e.add_argument("--ppl-tokens", type=int, default=None, help="score a fixed slice of this many tokens of each text")
    e.add_argument("--ppl-seq-len", type=int, default=256, help="perplexity window (default 256)")
    e.add_argument("--tasks", default=None, help="comma-separated tasks (names, .jsonl files or NAME=FILE)")
    e.add_argument("--task-dir", default=None, help="folder of <task>.jsonl files for task names")
    e.add_argument("--limit", type=int, default=None, help="at most this many items per task (same items for every row)")
    e.add_argument("--eval-batch-size", type=int, default=8, help="sequences per forward pass in evaluation (default 8)")
    e.add_argument("--no-teacher-row", action="store_true", help="do not evaluate the dense teacher")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import StreamlineError
    from ..healing.compare import CompareConfig, compare_healing, render_comparison, write_comparison
    from ..loading import resolve_model_spec
    from ..utils import check_output_dir

    check_output_dir(args.output, args.overwrite)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from ..healing import parse_method_spec

    for m in methods:  # bad specs fail before loading anything
        parse_method_spec(m)
    if args.budget_tokens < 1:
        raise StreamlineError(f"--budget-tokens {args.budget_tokens} must be >= 1")
    healing = healing_config_from_args(args)
    rates = {}
    for item in (args.learning_rates or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise StreamlineError(f"--learning-rates {item!r}: expected METHOD=RATE, e.g. lora=1e-3") from None
    spec = resolve_model_spec(args.model)
    # everything that needs no weights is checked before any model loads
    from ..evaluation.suite import text_name
    from ..loading import _load_tokenizer
    from ..validation import check_data_source, check_text_file
    from .common import preflight_model

    for source in data_sources(args):
        check_data_source(source, "--data", allow_hub_id=True)
    for item in args.ppl:
        check_text_file(text_name(item)[1], "--ppl")
    from .common import refuse_sequential

    refuse_sequential(args, "trains the model")
    given = [f"--{k.replace('_', '-')}" for k in ("revision", "attn_implementation") if getattr(args, k, None)]
    if given:
        from ..errors import StreamlineError

        raise StreamlineError(f"{given[0]}: compare-healing reloads --model for every method from a local folder and "
                              "takes no Hub loading options; download the model first (hf download) and pass the folder")
    preflight_model(args)
    if args.teacher:
        preflight_model(args, "teacher")
    tok = _load_tokenizer(spec, args.trust_remote_code, "--model")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    data = data_from_args(args, tok)
    cfg = CompareConfig(methods=methods, budget_tokens=args.budget_tokens, ppl=list(args.ppl),
                        ppl_tokens=args.ppl_tokens, ppl_seq_len=args.ppl_seq_len,
                        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else [],
                        limit=args.limit, task_dir=args.task_dir, eval_batch_size=args.eval_batch_size,
                        include_teacher=not args.no_teacher_row, learning_rates=rates, seed=args.seed)
    report = compare_healing(spec, data, cfg, healing, teacher=args.teacher, dtype=args.dtype, device=args.device)
    out = write_comparison(report, args.output, overwrite=args.overwrite)
    print(render_comparison(report))
    print(f"wrote {out}/comparison.md, comparison.json and comparison.png")
    return 0
