"""The ``apply`` workflow (``hf-streamline apply``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.apply.run(arguments)``). Apply a saved plan (streamline_plan.json) to its base model again."""

from __future__ import annotations

import copy
from typing import Any

from ..errors import mentioning
from .common import Say, note, load_from_args, preflight_model


def run(args: Any, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
    from ..plan import StreamlinePlan, apply_plan
    from ..pruning import save_pruned
    from ..utils import check_output_dir

    check_output_dir(args.output, args.overwrite)
    plan = StreamlinePlan.load(args.plan)
    if args.model is None:
        args.model = plan.base_model
    from ..plan import check_plan_base

    # the base model is checked against the plan from its config alone, before the weights load
    with mentioning("model"):
        check_plan_base(plan, preflight_model(args), force=args.force, what=f"{{model}} {str(args.model)!r}")
    model, tok = load_from_args(args)
    import warnings

    with warnings.catch_warnings():  # the check above has warned once already
        warnings.simplefilter("ignore")
        model = apply_plan(model, plan, force=args.force)
    out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite)
    say(f"applied {len(plan.operations)} operation(s); saved to {out}")
    return 0
