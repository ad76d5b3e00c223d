"""The ``compare-healing`` workflow (``hf-streamline compare-healing``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.compare_healing.run(arguments)``). Every healing method on one pruned model under the same token budget;
a table (markdown + JSON) of trainable parameters, wall time, peak memory, perplexity and task accuracy, and a chart."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from ..errors import mentioning
from .common import Say, note
from .heal import data_from_args, data_sources, healing_config_from_args
if TYPE_CHECKING:
    from ..arguments.compare_healing import CompareHealingArguments


def run(args: CompareHealingArguments, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
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
        raise StreamlineError("must be >= 1", argument="budget_tokens", value=args.budget_tokens)
    healing = healing_config_from_args(args)
    from ..healing.api import check_training_args

    check_training_args(healing.training_args)
    rates = {}
    for item in (args.learning_rates or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise StreamlineError(f"{item!r}: expected METHOD=RATE, e.g. lora=1e-3", argument="learning_rates",
                                   value=args.learning_rates) from None
    spec = resolve_model_spec(args.model)
    # everything that needs no weights is checked before any model loads
    from ..evaluation.suite import text_name
    from ..loading import _load_tokenizer
    from ..validation import check_data_source, check_text_file
    from .common import preflight_model

    for source in data_sources(args):
        with mentioning("data"):
            check_data_source(source, "{data}", allow_hub_id=True)
    for item in args.ppl:
        with mentioning("ppl"):
            check_text_file(text_name(item)[1], "{ppl}")
    from .common import refuse_sequential

    refuse_sequential(args, "trains the model")
    given = [k for k in ("revision", "attn_implementation") if getattr(args, k, None)]
    if given:
        raise StreamlineError("compare-healing reloads {model} for every method from a local folder and takes no Hub "
                              "loading options; download the model first (hf download) and pass the folder",
                              argument=given[0], mentions=("model",))
    preflight_model(args)
    if args.teacher:
        preflight_model(args, "teacher")
    with mentioning("model"):
        tok = _load_tokenizer(spec, args.trust_remote_code, "{model}")
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
    say(render_comparison(report))
    say(f"wrote {out}/comparison.md, comparison.json and comparison.png")
    return 0
