"""``hf-streamline push``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import BaseModelArguments, CommandArguments, hub_model_id


@dataclass
class PushArguments(BaseModelArguments, CommandArguments):
    """Upload a saved model folder (model, tokenizer, plan, card, remote code) to the Hub in one commit."""

    command: ClassVar[str] = "push"

    folder: str | None = option(positional=True, metavar="DIR",
                                help="model folder written by hf-streamline (prune / apply / merge / replace)")
    repo_id: str | None = option(required=True, help="NAME or NAMESPACE/NAME of the Hub model repository (created if "
                                                     "missing)")
    private: bool = option(False, help="create the repository private (an existing one keeps its visibility)")
    revision: str | None = option(help="branch to commit to (created from main if missing; default main)")
    token: str | None = option(help="Hub access token (default: HF_TOKEN or the stored `hf auth login` token); never "
                                    "written anywhere")
    commit_message: str | None = option(help="commit message (default: says what the plan did)")
    report: str | None = option(help="evaluation report.json for a card rendered at push time (default: "
                                     "report/report.json or report.json in DIR)")
    regenerate_card: bool = option(False, help="render the card again for this repo id instead of uploading "
                                               "DIR/README.md (DIR is not modified)")
    keep_stale: bool = option(False, help="keep weight files on the Hub that DIR no longer has (default: delete them "
                                          "in the same commit)")
    include: list[str] = option(default_factory=list, action="append", metavar="PATTERN",
                                help="also upload files that stay local by default (hidden files such as .env, *.log, "
                                     "training output OUTPUT.training/ and checkpoint-*): a path, file name or folder "
                                     "pattern (repeatable). A file holding your Hub token is refused whatever this "
                                     "says")
    base_model: str | None = option(parse=hub_model_id, metavar="ORG/NAME",
                                    help="Hub id of the base model where the plan records a local folder: the uploaded "
                                         "card gets base_model and base_model_relation (DIR is not modified)")
