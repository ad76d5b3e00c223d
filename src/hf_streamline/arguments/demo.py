"""``hf-streamline demo``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import CommandArguments


@dataclass
class DemoArguments(CommandArguments):
    """The recommended recipe, scaled down, on the bundled SmolLM2 (hf_streamline.workflows.demo)."""

    command: ClassVar[str] = "demo"

    model: str | None = option(help="model to use instead of the bundled SmolLM2-135M-Instruct")
    output: str = option("streamline-demo", help="output folder (default streamline-demo)")
    overwrite: bool = option(False, help="replace an existing output folder")
    data_dir: str | None = option(help="folder with train/, text/ and eval/ laid out as the bundled data (default: the "
                                       "data bundled with hf-streamline, so the demo runs offline)")
    ratio: float = option(0.25, help="fraction of layers to remove (default 0.25)")
    samples: int | None = option(help="calibration sequences the layer search measures its KL on (default: the "
                                      "recipe's, 8)")
    seq_len: int = option(256, help="tokens per calibration sequence (default 256)")
    heal_steps: int = option(30, help="distillation steps of 4 x 256 tokens (default 30; the recipe trains on 270,000 "
                                      "tokens; 0 = no healing)")
    limit: int = option(100, help="items per task (default 100, three tasks)")
    ppl_tokens: int = option(16384, help="WikiText-2 tokens for perplexity (default 16384)")
    no_speed: bool = option(False, help="skip the prefill/decode timing in the report")
    validate_only: bool = option(False, help="print the recipe the demo would run and exit")
