"""``hf-streamline mergekit PLAN``: write a plain removal plan as a mergekit passthrough YAML."""

from __future__ import annotations

import argparse

HELP = "export a layer-removal plan as a mergekit passthrough recipe"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.mergekit import MergekitArguments

    add_arguments(sub.add_parser(name, help=HELP), MergekitArguments).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plan import StreamlinePlan
    from ..recipes import mergekit_passthrough_yaml

    text = mergekit_passthrough_yaml(StreamlinePlan.load(args.plan), model=args.model, dtype=args.dtype)
    if args.output:
        from ..utils import write_text_atomic

        write_text_atomic(args.output, text)
        print(f"mergekit recipe written to {args.output}")
    else:
        print(text, end="")
    return 0
