"""``hf-streamline merge``: every option, its default and its help (the one declaration; hf_streamline.arguments).

The options that are fields of the library's :class:`hf_streamline.options.MergeConfig` (``--threshold``,
``--rule``, ``--similarity`` ...) take their default and their help from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..options import SCORINGS, MergeConfig
from .base import field_option, option, required
from .common import BaseModelArguments, CalibrationArguments, ModelArguments, OutputArguments



def config_option(name: str, **meta: Any) -> Any:
    """The option that is ``MergeConfig.<name>`` (its default and help)."""
    return field_option(MergeConfig, name, **meta)


def _rules() -> list[str]:
    from ..plugins import MERGE_RULES

    return sorted(MERGE_RULES)


def _similarities() -> list[str]:
    from ..plugins import OUTPUT_SIMILARITIES

    return sorted(OUTPUT_SIMILARITIES)


@dataclass
class MergeArguments(OutputArguments, CalibrationArguments, BaseModelArguments, ModelArguments):
    """Merge runs of similar consecutive layers into one layer each (SLM window search)."""

    command: ClassVar[str] = "merge"
    REQUIRED_ONE_OF: ClassVar[tuple[str, ...]] = ("target",)

    calibration: str | None = required(CalibrationArguments, "calibration")
    threshold: float | None = config_option("threshold", exclusive="target")
    remove: int | None = config_option("remove", exclusive="target")
    ratio: float | None = config_option("ratio", exclusive="target")
    rule: str = config_option("rule", choices=_rules)
    similarity: str = config_option("similarity", choices=_similarities)
    scoring: str = config_option("scoring", choices=SCORINGS)
    skip_first_tokens: int | None = config_option("skip_first_tokens", metavar="N")
    kl_topk: int = config_option("kl_topk", metavar="K")
    full_forwards: bool = option(False, help="do not record layer inputs: every trial runs the whole model (less "
                                             "memory, slower)")  # = not MergeConfig.reuse_hidden
    naive: bool = config_option("naive")
    eval_text: str | None = option(help="text file for perplexity before/after (default: the calibration)")
    ppl_tokens: int | None = option(deprecated=("--eval-tokens",),
                                    help="evaluate perplexity on at most this many tokens")
    no_eval: bool = option(False, help="skip the perplexity before/after")
