"""``hf-streamline card``: render the model card of a saved model folder locally, to review it before pushing.

The command parses its arguments and prints; the work is ``hf_streamline.workflows.card``."""

from __future__ import annotations

import argparse

HELP = "render the model card (README.md) of a saved model folder without pushing"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.card import CardArguments

    add_arguments(sub.add_parser(name, help=HELP), CardArguments).set_defaults(func=run)



def run(args) -> int:
    from ..workflows.card import run as work

    return work(args, say=print)
