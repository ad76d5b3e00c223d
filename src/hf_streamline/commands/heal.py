"""``hf-streamline heal``: train a pruned model back (partial layers, LoRA, QLoRA, distillation) and save it.

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.heal``."""

from __future__ import annotations

import argparse

HELP = "heal a pruned model: partial-layer training, LoRA, QLoRA or distillation"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.heal import HealArguments

    add_arguments(sub.add_parser(name, help=HELP), HealArguments).set_defaults(func=run)


def run(args) -> int:
    from ..workflows.heal import run as work

    return work(args, say=print)
