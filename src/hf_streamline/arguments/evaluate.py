"""``hf-streamline evaluate``: every option, its default and its help (the one declaration; hf_streamline.arguments).

The defaults repeat ``hf_streamline.evaluation.suite.EvaluationConfig``'s: that module imports torch, so they are
literals here."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import ModelArguments, OutputArguments, QuantizedLoadArguments


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
        raise argparse.ArgumentTypeError(exc.args[0] if exc.args else str(exc)) from None  # argparse names --limit


def _tasks_help() -> str:
    from ..evaluation.tasks import TASKS

    return (f"comma-separated tasks: registered names ({', '.join(TASKS)}; lm-eval's stock templates), any lm-eval "
            "task, group or tag name when lm_eval is installed (e.g. arc_easy,hellaswag,mmlu), .jsonl files, "
            "NAME=FILE, or task YAMLs")


def _task_dir_help() -> str:
    from ..evaluation.tasks import EVAL_DIR_ENV

    return f"folder holding <task>.jsonl for task names (default ${EVAL_DIR_ENV}; else the Hub dataset)"


@dataclass
class EvaluateArguments(OutputArguments, QuantizedLoadArguments, ModelArguments):
    """Perplexity, zero-shot tasks, stability / agreement with a dense baseline and speed of one or more models."""

    command: ClassVar[str] = "evaluate"

    baseline: str | None = option(help="the dense model folder to compare with (label 'dense')")
    # action "extend": --ppl A --ppl B gives both
    model_extra: list[str] = option(default_factory=list, metavar="DIR", action="extend",
                                    help="more pruned models (then every model is labelled by its folder name)")
    model_path: str | None = option(help="path recorded for --model in the report (default: --model; recipes give the "
                                         "final output folder when they evaluate a staging folder)")
    label: str | None = option(help="label of --model in the report (default 'pruned', or its folder name)")
    ppl: list[str] = option(default_factory=list, metavar="FILE", action="extend",
                            help="text files for perplexity (NAME=FILE to name them), e.g. wikitext2_test.raw "
                                 "ptb.test.txt")
    tasks: list[str] = option(default_factory=list, metavar="TASKS", action="extend", help=_tasks_help)
    task_dir: str | None = option(help=_task_dir_help)
    include_path: str | None = option(help="folder of lm-eval task YAMLs (lm-eval's own form, e.g. with a local "
                                           "dataset_path)")
    limit: int | float | None = option(parse=limit_type,
                                       help="items per task as lm-eval: the first N, or a fraction below 1 (e.g. 0.1)")
    sample_seed: int | None = option(flags=["--sample-seed", "--seed"],
                                     help="with --limit: a seeded random sample of that many items instead of the "
                                          "first ones")
    batch_size: int = option(8, help="questions per forward pass (default 8)")
    no_prefix_reuse: bool = option(False, help="score every choice with its full context")
    ppl_seq_len: int | None = option(help="perplexity window in tokens (default: min(2048, the model's context), as "
                                          "the pruning papers)")
    ppl_stride: int | None = option(help="start a perplexity window every N tokens (default: the window; smaller = "
                                         "more context)")
    ppl_tokens: int | None = option(deprecated=("--ppl-max-tokens",),
                                    help="score at most this many tokens of each --ppl text")
    agreement_text: str | None = option(help="text for KL / top-1 agreement (default: the first --ppl)")
    agreement_tokens: int = option(8192, help="tokens of that text used (default 8192)")
    no_speed: bool = option(False, help="skip the prefill / decode timing")
    speed_repeats: int = option(5, help="interleaved timing repeats, median reported (default 5)")
    speed_prompt_len: int = option(128, help="prompt tokens for prefill timing (default 128)")
    speed_new_tokens: int = option(32, help="tokens decoded with the KV cache (default 32)")
    generate: int = option(16, help="with --baseline: greedy generations on N prompts of the agreement text compared "
                                    "with the baseline's (exact match, ROUGE-L, tokens agreeing; default 16, 0 = off)")
    generate_tokens: int = option(32, help="tokens generated per prompt (default 32)")
    lm_eval: bool = option(False, help="also run lm-eval-harness (HFLM) on the same items and compare")
    threads: int | None = option(help="torch CPU threads (default: torch's choice)")
    no_samples: bool = option(False, help="do not write per-item samples/<model>/<task>.jsonl")
    no_plots: bool = option(False, help="do not draw PNGs")
