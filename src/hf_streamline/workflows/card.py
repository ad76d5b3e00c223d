"""The ``card`` workflow (``hf-streamline card``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.card.run(arguments)``). Render the model card of a saved model folder locally, to review it before pushing."""

from __future__ import annotations

from typing import Any

from .common import Say, note


def run(args: Any, say: Say = note) -> int:
    from pathlib import Path

    from ..publishing import render_model_card, write_model_card

    extra = {k: v for k, v in {"license": args.license, "base_label": args.base_label,
                                "model_label": args.model_label}.items() if v}
    if args.output == "-" or args.template:
        card = render_model_card(args.folder, report=args.report, extra=extra, repo_id=args.repo_id,
                                 template=args.template, base_model=args.base_model)
        if args.output == "-":
            say(str(card))
            return 0
        out = Path(args.output) if args.output else Path(args.folder) / "README.md"
        out.write_text(str(card), encoding="utf-8")
    else:
        out = write_model_card(args.folder, report=args.report, extra=extra, repo_id=args.repo_id, output=args.output,
                               base_model=args.base_model)
    say(f"wrote the model card to {out}")
    return 0
