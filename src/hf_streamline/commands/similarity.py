"""``hf-streamline similarity``: layer x layer similarity of decoder-layer outputs (CKA / cosine) as JSON + heat map.

The command parses its arguments and prints; the work (checks, loading, the method, saving) is ``hf_streamline.workflows.similarity``."""

from __future__ import annotations

import argparse

HELP = "layer x layer similarity map (linear/RBF CKA with unbiased HSIC, or cosine)"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.similarity import SimilarityArguments

    add_arguments(sub.add_parser(name, help=HELP), SimilarityArguments).set_defaults(func=run)


def run(args) -> int:
    from ..workflows.similarity import run as work

    return work(args, say=print)
