"""The ``run`` workflow (``hf-streamline run``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.run.run(arguments)``). One validated file describes the whole job."""

from __future__ import annotations

from typing import Any

from .common import Say, note


def run(args: Any, say: Say = note) -> int:
    from ..recipes import load_recipe, run_recipe, validate_recipe
    from ..recipes.runner import check_recipe_inputs

    recipe = load_recipe(args.recipe)
    if args.output:
        recipe = validate_recipe({**recipe.data, "output": args.output}, source=args.recipe)
    check_recipe_inputs(recipe, source=args.recipe)  # every named file exists, the output is none of them
    if args.validate_only:
        say(f"{args.recipe}: valid ({recipe.method}; stages: "
              f"{', '.join(s for s in ('heal', 'evaluate', 'push') if s in recipe.data) or 'none'})")
        return 0
    out = run_recipe(recipe, overwrite=args.overwrite or None)
    say(f"done: {out}")
    return 0
