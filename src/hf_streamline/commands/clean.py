"""``hf-streamline clean DIR``: remove what a killed run on DIR left behind.

The command parses its arguments and prints; the work is ``hf_streamline.workflows.clean``."""

from __future__ import annotations

import argparse

HELP = "remove the staging and work folders a killed run on DIR left behind"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.clean import CleanArguments

    add_arguments(sub.add_parser(name, help=HELP), CleanArguments).set_defaults(func=run)



def run(args) -> int:
    from ..workflows.clean import run as work

    return work(args, say=print)
