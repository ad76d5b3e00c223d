"""``hf-streamline convert``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import CommandArguments


@dataclass
class ConvertArguments(CommandArguments):
    """Dequantize a .gguf file into a plain safetensors folder (default: the bundled SmolLM2, cached)."""

    command: ClassVar[str] = "convert"

    gguf: str | None = option(positional=True, nargs="?",
                              help=".gguf file (default: the bundled SmolLM2-135M-Instruct)")
    output: str | None = option(help="output folder (default for the bundled model: the cache)")
    overwrite: bool = option(False, help="replace an existing output folder")
