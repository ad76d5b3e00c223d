"""The ``evaluate`` workflow (``hf-streamline evaluate``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.evaluate.run(arguments)``). Perplexity, zero-shot tasks, stability / agreement with a dense baseline, speed -> report/."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..errors import mentioning
from .common import Say, note, join_process_group, loading_kwargs


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
        raise StreamlineError("the same model folder is given twice ({model} / {model_extra})",
                              mentions=("model", "model_extra"))
    return out


def run(args: Any, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
    from ..errors import StreamlineError
    from ..evaluation.report import write_report
    from ..evaluation.suite import EvaluationConfig, evaluate_models
    from ..loading import resolve_model_spec
    from ..utils import check_output_dir

    check_output_dir(args.output, args.overwrite)  # refuse before any long work
    if not args.tasks and not args.ppl:
        raise StreamlineError("nothing to measure: give {tasks} and/or {ppl}", mentions=("tasks", "ppl"))
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
        with mentioning("ppl"):
            check_text_file(text_name(spec)[1], "{ppl}")
    if args.agreement_text:
        with mentioning("agreement_text"):
            check_text_file(args.agreement_text, "{agreement_text}")
    for label, spec in specs.items():
        name = "baseline" if label == "dense" else ("model" if labels[label] == args.model else "model_extra")
        with mentioning(name):
            inspect_model(spec, trust_remote_code=args.trust_remote_code, revision=args.revision, token=args.token,
                          what="{%s}" % name)
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
        say(f"{task}: " + ", ".join(f"{l} acc {v['acc']:.4f} acc_norm {v['acc_norm']:.4f}" for l, v in per.items())
              + f" (n={next(iter(per.values()))['n']})")
    for text, per in rep["perplexity"].items():
        say(f"perplexity {text}: " + ", ".join(f"{l} {v:.3f}" for l, v in per.items()))
    for key, pair in rep["pairs"].items():
        st = pair["stability"]
        mean = sum(st.values()) / len(st) if st else float("nan")
        kl = "n/a" if pair["kl"] is None else f"{pair['kl']:.4f}"
        say(f"{key}: mean stability {mean:.4f}, KL {kl}")
    for label, v in rep["speed"].items():
        say(f"speed {label}: prefill {v['prefill_tokens_per_s']:.1f} tok/s, decode {v['decode_tokens_per_s']:.1f} tok/s")
    say(f"wrote {out / 'report.json'}, {out / 'report.md'}")
    return 0
