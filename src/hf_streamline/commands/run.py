"""``hf-streamline run RECIPE.yaml``: one validated file describes the whole job.

The command parses its arguments and prints; the work is ``hf_streamline.workflows.run``."""

from __future__ import annotations

import argparse

HELP = "run a YAML recipe (model, calibration, method, healing, evaluation, output, push)"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.run import RunArguments

    add_arguments(sub.add_parser(name, help=HELP), RunArguments).set_defaults(func=run)



def run(args) -> int:
    from ..workflows.run import run as work

    return work(args, say=print)
