"""``hf-streamline merge``: SLM sliding-window layer merging; saves a plain checkpoint + plan; PPL before/after.

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.merge``."""

from __future__ import annotations

import argparse

HELP = "merge runs of similar consecutive layers (SLM window search) into one layer each"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.merge import MergeArguments

    add_arguments(sub.add_parser(name, help=HELP), MergeArguments).set_defaults(func=run)


def run(args) -> int:
    from ..workflows.merge import run as work

    return work(args, say=print)
