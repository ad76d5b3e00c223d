"""``hf-streamline compare-healing``: every healing method on one pruned model under the same token budget;

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.compare_healing``."""

from __future__ import annotations

import argparse

HELP = "compare healing methods side by side under one token budget"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.compare_healing import CompareHealingArguments

    add_arguments(sub.add_parser(name, help=HELP), CompareHealingArguments).set_defaults(func=run)


def run(args) -> int:
    from ..workflows.compare_healing import run as work

    return work(args, say=print)
