"""``hf-streamline prune``: score, choose and remove layers; save a plain checkpoint + plan; PPL before/after.

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.prune``."""

from __future__ import annotations

import argparse

HELP = "remove the least important decoder layers and save a plain checkpoint"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.prune import PruneArguments

    add_arguments(sub.add_parser(name, help=HELP), PruneArguments).set_defaults(func=run)


def run(args) -> int:
    from ..workflows.prune import run as work

    return work(args, say=print)
