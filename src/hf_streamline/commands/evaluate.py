"""``hf-streamline evaluate``: perplexity, zero-shot tasks, stability / agreement with a dense baseline, speed -> report/.

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.evaluate``."""

from __future__ import annotations

import argparse

# the line of `hf-streamline --help` (read without building this parser)
HELP = ("evaluate pruned (and dense) models: perplexity, zero-shot tasks, stability, speed; "
        "writes report.json, report.md and PNGs")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.evaluate import EvaluateArguments

    add_arguments(sub.add_parser(name, help=HELP), EvaluateArguments).set_defaults(func=run)


def limit_type(text: str) -> int | float:
    """``--limit``'s type (hf_streamline.arguments.evaluate.limit_type; imported when used: this module stays light)."""
    from ..arguments.evaluate import limit_type

    return limit_type(text)


def run(args) -> int:
    from ..workflows.evaluate import run as work

    return work(args, say=print)
