"""``hf-streamline apply``: apply a saved plan (streamline_plan.json) to its base model again."""

from __future__ import annotations

import argparse

from .common import load_from_args, preflight_model

HELP = "apply a saved streamline_plan.json to a base model"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.apply import ApplyArguments

    add_arguments(sub.add_parser(name, help=HELP), ApplyArguments).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plan import StreamlinePlan, apply_plan
    from ..pruning import save_pruned
    from ..utils import check_output_dir

    check_output_dir(args.output, args.overwrite)
    plan = StreamlinePlan.load(args.plan)
    if args.model is None:
        args.model = plan.base_model
    from ..plan import check_plan_base

    # the base model is checked against the plan from its config alone, before the weights load
    check_plan_base(plan, preflight_model(args), force=args.force, what=f"--model {str(args.model)!r}")
    model, tok = load_from_args(args)
    import warnings

    with warnings.catch_warnings():  # the check above has warned once already
        warnings.simplefilter("ignore")
        model = apply_plan(model, plan, force=args.force)
    out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite)
    print(f"applied {len(plan.operations)} operation(s); saved to {out}")
    return 0
