"""One dataclass per command: the single declaration of every option, its default and its help.

The command line is generated from them (``hf_streamline.arguments.base.add_arguments``), a recipe section validates
into them (``values_from_mapping``), and ``hf-streamline run`` and Python callers build them directly::

    from hf_streamline.arguments import PruneArguments
    from hf_streamline.cli import call

    call(PruneArguments(model="HuggingFaceTB/SmolLM2-135M", metric="block_influence", remove=8,
                        calibration="bundled:train/wikipedia_30_articles.txt", output="pruned"))

Importing this package is light (no torch): ``hf-streamline --help`` and ``run --validate-only`` read it.
"""

from __future__ import annotations

import importlib

from ..lazy import lazy_namespace
from .base import option  # noqa: F401 - re-exported: declare an option of a plug-in's own command

# command -> "module:Class" of its arguments (one line each; the modules are this package's)
COMMAND_ARGUMENTS: dict[str, str] = {
    "score": "score:ScoreArguments",
    "prune": "prune:PruneArguments",
    "apply": "apply:ApplyArguments",
    "convert": "convert:ConvertArguments",
    "run": "run:RunArguments",
    "mergekit": "mergekit:MergekitArguments",
    "demo": "demo:DemoArguments",
    "merge": "merge:MergeArguments",
    "similarity": "similarity:SimilarityArguments",
    "evaluate": "evaluate:EvaluateArguments",
    "card": "card:CardArguments",
    "push": "push:PushArguments",
    "replace": "replace:ReplaceArguments",
    "export": "export:ExportArguments",
    "heal": "heal:HealArguments",
    "compare-healing": "compare_healing:CompareHealingArguments",
    "clean": "clean:CleanArguments",
}

_LAZY = {spec.split(":")[1]: spec.split(":")[0] for spec in COMMAND_ARGUMENTS.values()}
_LAZY.update({name: "common" for name in ("ModelArguments", "CalibrationArguments", "OutputArguments",
                                          "BaseModelArguments", "QuantizedLoadArguments", "CommandArguments")})

__getattr__, __dir__ = lazy_namespace(__name__, _LAZY, globals(), submodules=True)


def arguments_class(command: str) -> type:
    """The arguments dataclass of ``hf-streamline COMMAND``."""
    module, name = COMMAND_ARGUMENTS[command].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), name)
