"""``hf-streamline apply``: apply a saved plan (streamline_plan.json) to its base model again.

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.apply``."""

from __future__ import annotations

import argparse

HELP = "apply a saved streamline_plan.json to a base model"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.apply import ApplyArguments

    add_arguments(sub.add_parser(name, help=HELP), ApplyArguments).set_defaults(func=run)


def run(args) -> int:
    from ..workflows.apply import run as work

    return work(args, say=print)
