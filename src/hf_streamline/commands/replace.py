"""``hf-streamline replace``: LLM-Streamline -- replace the most redundant block by one trained module.

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.replace``."""

from __future__ import annotations

import argparse

# the line of `hf-streamline --help` (read without building this parser)
HELP = ("replace the most redundant block of layers by one trained module (LLM-Streamline) "
        "or by a fitted linear map folded into the layer before it (--replacement linear)")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.replace import ReplaceArguments

    add_arguments(sub.add_parser(name, help=HELP), ReplaceArguments).set_defaults(func=run)


def run(args) -> int:
    from ..workflows.replace import run as work

    return work(args, say=print)
