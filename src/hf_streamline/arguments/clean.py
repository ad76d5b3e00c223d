"""``hf-streamline clean``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import CommandArguments


@dataclass
class CleanArguments(CommandArguments):
    """Remove the staging and work folders a killed run on DIR left behind."""

    command: ClassVar[str] = "clean"

    folder: str | None = option(positional=True, nargs="?", metavar="DIR",
                                help="the output folder of the killed run (default: every dead run's $TMPDIR work "
                                     "folders)")
    dry_run: bool = option(False, help="list what would be removed, remove nothing")
