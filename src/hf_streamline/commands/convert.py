"""``hf-streamline convert``: turn a .gguf file (default: the bundled SmolLM2) into a plain transformers folder.

The command parses its arguments and prints; the work is ``hf_streamline.workflows.convert``."""

from __future__ import annotations

import argparse

HELP = "dequantize a .gguf into a plain safetensors folder (default: bundled SmolLM2, cached)"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.convert import ConvertArguments

    add_arguments(sub.add_parser(name, help=HELP), ConvertArguments).set_defaults(func=run)



def run(args) -> int:
    from ..workflows.convert import run as work

    return work(args, say=print)
