"""``hf-streamline apply``: apply a saved plan (streamline_plan.json) to its base model again."""

from __future__ import annotations

import argparse

from .common import add_model_args, add_output_args, load_from_args


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="apply a saved streamline_plan.json to a base model")
    p.add_argument("plan", help="streamline_plan.json, or a folder holding one")
    add_model_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plan import StreamlinePlan, apply_plan
    from ..pruning import save_pruned
    from ..utils import check_output_dir

    check_output_dir(args.output, args.overwrite)
    plan = StreamlinePlan.load(args.plan)
    if args.model is None:
        args.model = plan.base_model
    model, tok = load_from_args(args)
    model = apply_plan(model, plan)
    out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite)
    print(f"applied {len(plan.operations)} operation(s); saved to {out}")
    return 0
