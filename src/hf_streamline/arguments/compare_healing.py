"""``hf-streamline compare-healing``: every option, its default and its help (the one declaration;
hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import COMPARE_METHODS
from .base import option
from .common import ModelArguments, OutputArguments
from .heal import HealingArguments


@dataclass
class CompareHealingArguments(OutputArguments, HealingArguments, ModelArguments):
    """Every healing method on one pruned model under the same token budget, side by side."""

    command: ClassVar[str] = "compare-healing"

    teacher: str | None = option(help="the dense model (distill, and the reference row)")
    methods: str = option(",".join(COMPARE_METHODS),
                          help=f"comma-separated method specs (default {','.join(COMPARE_METHODS)}); also lora:R, "
                               "distill:lora, distill:partial:K")
    budget_tokens: int | None = option(required=True, help="training tokens per method (the same for all)")
    learning_rates: str | None = option(help="learning rate per method, e.g. partial=3e-4,lora=1e-3,qlora=1e-3,"
                                             "distill=3e-4 (others: --learning-rate or the method's default)")
    # -- evaluation
    ppl: list[str] = option(default_factory=list, action="append", group="evaluation",
                            help="text file (or NAME=FILE) for perplexity; repeat for several (default: none)")
    ppl_tokens: int | None = option(group="evaluation",
                                    help="score a fixed slice of this many tokens of each text")
    ppl_seq_len: int = option(256, group="evaluation", help="perplexity window (default 256)")
    tasks: str | None = option(group="evaluation", help="comma-separated tasks (names, .jsonl files or NAME=FILE)")
    task_dir: str | None = option(group="evaluation", help="folder of <task>.jsonl files for task names")
    limit: int | None = option(group="evaluation",
                               help="at most this many items per task (same items for every row)")
    eval_batch_size: int = option(8, group="evaluation",
                                  help="sequences per forward pass in evaluation (default 8)")
    no_teacher_row: bool = option(False, group="evaluation", help="do not evaluate the dense teacher")
