"""``hf-streamline card``: render the model card of a saved model folder locally, to review it before pushing."""

from __future__ import annotations

import argparse

HELP = "render the model card (README.md) of a saved model folder without pushing"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help=HELP)
    p.add_argument("folder", metavar="DIR", help="model folder holding streamline_plan.json")
    p.add_argument("--output", default=None, help="where to write the card (default: DIR/README.md); - prints it")
    p.add_argument("--report", default=None,
                   help="evaluation report.json (default: report/report.json or report.json in DIR, else the plan's evaluation)")
    p.add_argument("--base-label", default=None, help="the report's label of the base model (default: dense, else its first model)")
    p.add_argument("--model-label", default=None, help="the report's label of this model (default: pruned, else its last model)")
    p.add_argument("--repo-id", default=None, help="Hub repo id used in the card's title and loading snippets")
    from .common import add_base_model_arg

    add_base_model_arg(p, help="Hub id of the base model where the plan records a local folder: the card gets "
                               "base_model and base_model_relation")
    p.add_argument("--license", default=None, help="license id to set (default: the base model's, else 'other')")
    p.add_argument("--template", default=None, help="a Jinja template to use instead of model_cards/streamline_model_card.md.jinja")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..publishing import render_model_card, write_model_card

    extra = {k: v for k, v in {"license": args.license, "base_label": args.base_label,
                                "model_label": args.model_label}.items() if v}
    if args.output == "-" or args.template:
        card = render_model_card(args.folder, report=args.report, extra=extra, repo_id=args.repo_id,
                                 template=args.template, base_model=args.base_model)
        if args.output == "-":
            print(str(card))
            return 0
        out = Path(args.output) if args.output else Path(args.folder) / "README.md"
        out.write_text(str(card), encoding="utf-8")
    else:
        out = write_model_card(args.folder, report=args.report, extra=extra, repo_id=args.repo_id, output=args.output,
                               base_model=args.base_model)
    print(f"wrote the model card to {out}")
    return 0
