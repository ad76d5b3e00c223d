"""``hf-streamline demo``: the whole pipeline on the bundled SmolLM2 in one command.

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.demo``."""

from __future__ import annotations

import argparse

# the line of `hf-streamline --help` (read without building this parser)
HELP = ("the recommended recipe, scaled down, on the bundled SmolLM2: prune, heal, evaluate "
        "and card in one command (~15 min on 2 CPUs)")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.demo import DemoArguments

    add_arguments(sub.add_parser(name, help=HELP), DemoArguments).set_defaults(func=run)


def run(args) -> int:
    from ..workflows.demo import run as work

    return work(args, say=print)
