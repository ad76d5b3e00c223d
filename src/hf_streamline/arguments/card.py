"""``hf-streamline card``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import BaseModelArguments, CommandArguments, hub_model_id


@dataclass
class CardArguments(BaseModelArguments, CommandArguments):
    """Render the model card (README.md) of a saved model folder locally, to review it before pushing."""

    command: ClassVar[str] = "card"

    folder: str | None = option(positional=True, metavar="DIR", help="model folder holding streamline_plan.json")
    output: str | None = option(help="where to write the card (default: DIR/README.md); - prints it")
    report: str | None = option(help="evaluation report.json (default: report/report.json or report.json in DIR, else "
                                     "the plan's evaluation)")
    base_label: str | None = option(help="the report's label of the base model (default: dense, else its first model)")
    model_label: str | None = option(help="the report's label of this model (default: pruned, else its last model)")
    repo_id: str | None = option(help="Hub repo id used in the card's title and loading snippets")
    base_model: str | None = option(parse=hub_model_id, metavar="ORG/NAME",
                                    help="Hub id of the base model where the plan records a local folder: the card "
                                         "gets base_model and base_model_relation")
    license: str | None = option(help="license id to set (default: the base model's, else 'other')")
    template: str | None = option(help="a Jinja template to use instead of "
                                       "model_cards/streamline_model_card.md.jinja")
