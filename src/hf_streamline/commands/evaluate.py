"""``hf-streamline evaluate``: perplexity, zero-shot tasks, stability / agreement with a dense baseline, speed -> report/."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (add_model_args, add_output_args, add_ppl_tokens_arg, add_quantized_load_args, join_process_group,
                     loading_kwargs)

# the line of `hf-streamline --help` (read without building this parser)
HELP = ("evaluate pruned (and dense) models: perplexity, zero-shot tasks, stability, speed; "
        "writes report.json, report.md and PNGs")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..evaluation.tasks import EVAL_DIR_ENV, TASKS

    p = sub.add_parser(name, help=HELP)
    add_model_args(p)
    add_quantized_load_args(p)
    p.add_argument("--baseline", default=None, help="the dense model folder to compare with (label 'dense')")
    p.add_argument("--model-extra", nargs="+", action="extend", default=[], metavar="DIR",
                   help="more pruned models (then every model is labelled by its folder name)")
    p.add_argument("--model-path", default=None,
                   help="path recorded for --model in the report (default: --model; recipes give the final output "
                        "folder when they evaluate a staging folder)")
    p.add_argument("--label", default=None, help="label of --model in the report (default 'pruned', or its folder name)")
    p.add_argument("--ppl", nargs="+", action="extend", default=[], metavar="FILE",
                   help="text files for perplexity (NAME=FILE to name them), e.g. wikitext2_test.raw ptb.test.txt")
    p.add_argument("--tasks", nargs="+", action="extend", default=[], metavar="TASKS",
                   help=f"comma-separated tasks: registered names ({', '.join(TASKS)}; lm-eval's stock templates), "
                        "any lm-eval task, group or tag name when lm_eval is installed (e.g. arc_easy,hellaswag,mmlu), "
                        ".jsonl files, NAME=FILE, or task YAMLs")
    p.add_argument("--task-dir", default=None,
                   help=f"folder holding <task>.jsonl for task names (default ${EVAL_DIR_ENV}; else the Hub dataset)")
    p.add_argument("--include-path", default=None,
                   help="folder of lm-eval task YAMLs (lm-eval's own form, e.g. with a local dataset_path)")
    p.add_argument("--limit", type=limit_type, default=None,
                   help="items per task as lm-eval: the first N, or a fraction below 1 (e.g. 0.1)")
    p.add_argument("--sample-seed", "--seed", dest="sample_seed", type=int, default=None,
                   help="with --limit: a seeded random sample of that many items instead of the first ones")
    p.add_argument("--batch-size", type=int, default=8, help="questions per forward pass (default 8)")
    p.add_argument("--no-prefix-reuse", action="store_true", help="score every choice with its full context")
    p.add_argument("--ppl-seq-len", type=int, default=None,
                   help="perplexity window in tokens (default: min(2048, the model's context), as the pruning papers)")
    p.add_argument("--ppl-stride", type=int, default=None,
                   help="start a perplexity window every N tokens (default: the window; smaller = more context)")
    add_ppl_tokens_arg(p, help="score at most this many tokens of each --ppl text", old="--ppl-max-tokens")
    p.add_argument("--agreement-text", default=None, help="text for KL / top-1 agreement (default: the first --ppl)")
    p.add_argument("--agreement-tokens", type=int, default=8192, help="tokens of that text used (default 8192)")
    p.add_argument("--no-speed", action="store_true", help="skip the prefill / decode timing")
    p.add_argument("--speed-repeats", type=int, default=5, help="interleaved timing repeats, median reported (default 5)")
    p.add_argument("--speed-prompt-len", type=int, default=128, help="prompt tokens for prefill timing (default 128)")
    p.add_argument("--speed-new-tokens", type=int, default=32, help="tokens decoded with the KV cache (default 32)")
    p.add_argument("--generate", type=int, default=16,
                   help="with --baseline: greedy generations on N prompts of the agreement text compared with the "
                        "baseline's (exact match, ROUGE-L, tokens agreeing; default 16, 0 = off)")
    p.add_argument("--generate-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    p.add_argument("--lm-eval", action="store_true", help="also run lm-eval-harness (HFLM) on the same items and compare")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-samples", action="store_true", help="do not write per-item samples/<model>/<task>.jsonl")
    p.add_argument("--no-plots", action="store_true", help="do not draw PNGs")
    add_output_args(p)
    p.set_defaults(func=run)


def limit_type(text: str) -> int | float:
    """``--limit``: a whole number of items (>= 1) or a fraction in (0, 1), as lm-eval's."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give N items or a fraction such as 0.1") from None
    from ..errors import StreamlineError
    from ..evaluation.tasks import check_limit

    try:
        return check_limit(value)
    except StreamlineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def model_labels(model: str | None, baseline: str | None, extra: list[str], label: str | None = None) -> dict[str, str | None]:
    """``{label: folder}``: 'dense' for the baseline; 'pruned' for --model alone, else folder names (made unique)."""
    from ..errors import StreamlineError

    out: dict[str, str | None] = {}
    if baseline is not None:
        out["dense"] = baseline
    pruned = [model, *extra]
    if len(pruned) == 1:
        out[label or "pruned"] = model
        return out
    for i, folder in enumerate(pruned):
        name = label if (i == 0 and label) else (Path(str(folder)).name if folder else "model")
        base, k = name, 2
        while name in out:
            name, k = f"{base}_{k}", k + 1
        out[name] = folder
    if len(set(map(str, pruned))) != len(pruned):
        raise StreamlineError("the same model folder is given twice (--model / --model-extra)")
    return out


def run(args: argparse.Namespace) -> int:
    from ..errors import StreamlineError
    from ..evaluation.report import write_report
    from ..evaluation.suite import EvaluationConfig, evaluate_models
    from ..loading import resolve_model_spec
    from ..utils import check_output_dir

    check_output_dir(args.output, args.overwrite)  # refuse before any long work
    if not args.tasks and not args.ppl:
        raise StreamlineError("nothing to measure: give --tasks and/or --ppl")
    from ..utils import is_main_process

    join_process_group(args)  # accelerate launch: the task items are shared out, every process gets all results
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    labels = model_labels(args.model, args.baseline, args.model_extra, args.label)
    specs = {k: resolve_model_spec(v) for k, v in labels.items()}
    # everything that needs no weights is checked before any model loads
    from ..evaluation.suite import text_name
    from ..loading import inspect_model
    from ..validation import check_device, check_text_file

    check_device(args.device)
    for spec in args.ppl:
        check_text_file(text_name(spec)[1], "--ppl")
    if args.agreement_text:
        check_text_file(args.agreement_text, "--agreement-text")
    for label, spec in specs.items():
        inspect_model(spec, trust_remote_code=args.trust_remote_code,
                      revision=args.revision, token=args.token,
                      what={"dense": "--baseline"}.get(label, "--model" if labels[label] == args.model else "--model-extra"))
    cfg = EvaluationConfig(tasks=args.tasks, ppl=args.ppl, limit=args.limit, sample_seed=args.sample_seed,
                           include_path=args.include_path, batch_size=args.batch_size,
                           prefix_reuse=False if args.no_prefix_reuse else "auto", task_dir=args.task_dir,
                           ppl_seq_len=args.ppl_seq_len, ppl_stride=args.ppl_stride,
                           ppl_max_tokens=args.ppl_tokens,
                           agreement_text=args.agreement_text, agreement_tokens=args.agreement_tokens,
                           speed=not args.no_speed, speed_prompt_len=args.speed_prompt_len,
                           speed_new_tokens=args.speed_new_tokens, speed_repeats=args.speed_repeats, lm_eval=args.lm_eval,
                           generate=args.generate, generate_tokens=args.generate_tokens)
    result = evaluate_models(specs, baseline="dense" if args.baseline else None, config=cfg, dtype=args.dtype,
                             device=args.device, trust_remote_code=args.trust_remote_code,
                             load_kwargs={"device_map": args.device_map, **loading_kwargs(args)})
    if args.model_path:
        for label, folder in labels.items():
            if folder == args.model and label in result.report["models"]:
                result.report["models"][label]["path"] = args.model_path
    if not is_main_process():  # the main process writes the report
        return 0
    out = write_report(result.report, args.output, overwrite=args.overwrite,
                       samples=None if args.no_samples else result.samples(), plots=not args.no_plots)
    rep = result.report
    for task, per in rep["tasks"].items():
        print(f"{task}: " + ", ".join(f"{l} acc {v['acc']:.4f} acc_norm {v['acc_norm']:.4f}" for l, v in per.items())
              + f" (n={next(iter(per.values()))['n']})")
    for text, per in rep["perplexity"].items():
        print(f"perplexity {text}: " + ", ".join(f"{l} {v:.3f}" for l, v in per.items()))
    for key, pair in rep["pairs"].items():
        st = pair["stability"]
        mean = sum(st.values()) / len(st) if st else float("nan")
        kl = "n/a" if pair["kl"] is None else f"{pair['kl']:.4f}"
        print(f"{key}: mean stability {mean:.4f}, KL {kl}")
    for label, v in rep["speed"].items():
        print(f"speed {label}: prefill {v['prefill_tokens_per_s']:.1f} tok/s, decode {v['decode_tokens_per_s']:.1f} tok/s")
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}")
    return 0
