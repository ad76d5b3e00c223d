"""``hf-streamline score``: per-layer (and per-block) importance scores as a table, JSON and a bar chart.

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.score``."""

from __future__ import annotations

import argparse

HELP = "score decoder layers (and blocks) by importance"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.score import ScoreArguments

    add_arguments(sub.add_parser(name, help=HELP), ScoreArguments).set_defaults(func=run)


def run(args) -> int:
    from ..workflows.score import run as work

    return work(args, say=print)
