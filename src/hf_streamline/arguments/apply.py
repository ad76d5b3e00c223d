"""``hf-streamline apply``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import ModelArguments, OutputArguments


@dataclass
class ApplyArguments(OutputArguments, ModelArguments):
    """Apply a saved plan (streamline_plan.json) to its base model again."""

    command: ClassVar[str] = "apply"

    plan: str | None = option(positional=True, help="streamline_plan.json, or a folder holding one")
    force: bool = option(False, help="apply the plan even if --model is not the base model it was made from (another "
                                     "architecture, hidden size, vocabulary or config hash than the plan records)")
