"""``hf-streamline merge``: every option, its default and its help (the one declaration; hf_streamline.arguments).

The options that are fields of the library's :class:`hf_streamline.options.MergeConfig` (``--threshold``,
``--rule``, ``--similarity`` ...) take their default and their help from it."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from ..options import SCORINGS, MergeConfig
from .base import option
from .common import BaseModelArguments, CalibrationArguments, ModelArguments, OutputArguments

_CONFIG = {f.name: f for f in fields(MergeConfig)}
_CALIBRATION = next(f for f in fields(CalibrationArguments) if f.name == "calibration")


def config_option(name: str, **meta: Any) -> Any:
    """The option that is ``MergeConfig.<name>``: its default, and its help (a sentence there) as a help line, with
    the default added where the text does not give it."""
    f = _CONFIG[name]
    default = f.default if f.default is not MISSING else None
    text = f.metadata["help"].strip().rstrip(".")
    if text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    if default not in (None, False) and "default" not in text.lower():
        text += f" (default {default})"
    return option(default, help=text.replace("%", "%%"), **meta)


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

    calibration: str | None = option(**_CALIBRATION.metadata, required=True)  # CalibrationArguments', required here
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
