"""``hf-streamline mergekit PLAN``: write a plain removal plan as a mergekit passthrough YAML."""

from __future__ import annotations

import argparse

HELP = "export a layer-removal plan as a mergekit passthrough recipe"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help=HELP)
    p.add_argument("plan", help="streamline_plan.json, or a folder holding one")
    p.add_argument("--model", default=None, help="base model name to write (default: the plan's base_model)")
    p.add_argument("--dtype", default="bfloat16", help="mergekit dtype (default bfloat16)")
    p.add_argument("--output", default=None, help="write the YAML here (default: print it)")
    p.set_defaults(func=run)


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
