"""``hf-streamline mergekit``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import CommandArguments


@dataclass
class MergekitArguments(CommandArguments):
    """Export a layer-removal plan as a mergekit passthrough recipe (YAML)."""

    command: ClassVar[str] = "mergekit"

    plan: str | None = option(positional=True, help="streamline_plan.json, or a folder holding one")
    model: str | None = option(help="base model name to write (default: the plan's base_model)")
    dtype: str = option("bfloat16", help="mergekit dtype (default bfloat16)")
    output: str | None = option(help="write the YAML here (default: print it)")
