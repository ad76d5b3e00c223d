"""``hf-streamline run RECIPE.yaml``: one validated file describes the whole job."""

from __future__ import annotations

import argparse

HELP = "run a YAML recipe (model, calibration, method, healing, evaluation, output, push)"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.run import RunArguments

    add_arguments(sub.add_parser(name, help=HELP), RunArguments).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..recipes import load_recipe, run_recipe, validate_recipe
    from ..recipes.runner import check_recipe_inputs

    recipe = load_recipe(args.recipe)
    if args.output:
        recipe = validate_recipe({**recipe.data, "output": args.output}, source=args.recipe)
    check_recipe_inputs(recipe, source=args.recipe)  # every named file exists, the output is none of them
    if args.validate_only:
        print(f"{args.recipe}: valid ({recipe.method}; stages: "
              f"{', '.join(s for s in ('heal', 'evaluate', 'push') if s in recipe.data) or 'none'})")
        return 0
    out = run_recipe(recipe, overwrite=args.overwrite or None)
    print(f"done: {out}")
    return 0
