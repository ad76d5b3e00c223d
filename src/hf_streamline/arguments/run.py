"""``hf-streamline run``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import CommandArguments


@dataclass
class RunArguments(CommandArguments):
    """Run a YAML recipe."""

    command: ClassVar[str] = "run"

    recipe: str | None = option(positional=True, recipe=False, help="recipe YAML file (see examples/)")
    validate_only: bool = option(False, recipe=False, help="check the recipe and exit")
    output: str | None = option(recipe=False, help="override the recipe's output folder")
    overwrite: bool = option(False, recipe=False, help="replace an existing output folder")
