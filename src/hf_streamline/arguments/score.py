"""``hf-streamline score``: every option, its default and its help (the one declaration; hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import CalibrationArguments, ModelArguments, QuantizedLoadArguments


def _metric_help() -> str:
    from ..plugins import SCORERS

    return f"metric or comma-separated metrics: {', '.join(sorted(SCORERS))} (default block_influence)"


@dataclass
class ScoreArguments(CalibrationArguments, QuantizedLoadArguments, ModelArguments):
    """Score decoder layers (and blocks of consecutive layers) by importance."""

    command: ClassVar[str] = "score"

    metric: str = option("block_influence", help=_metric_help)
    block_size: list[int] | None = option(action="append",
                                          help="also score blocks of n consecutive layers (repeatable); block metrics "
                                               "give every n by default")
    all_tokens: bool = option(False, help="angular: average over all tokens instead of the last")
    norm: str = option("l1", choices=("l1", "l2"), help="magnitude: which norm")
    output: str | None = option(help="write scores as JSON here")
    plot: str | None = option(help="write a PNG bar chart here")
