"""hf_streamline: make Hugging Face causal LMs shallower -- score, remove, merge or replace decoder layers, heal,
evaluate and publish."""

__version__ = "0.1.0"

import sys as _sys

from .errors import StreamlineError  # noqa: E402 - light: no torch
from .lazy import lazy_namespace as _lazy_namespace  # noqa: E402 - light: importlib only

# public name -> the submodule that defines it.  The names are imported on first use (PEP 562), so importing the
# package -- which the console script does before its first line runs -- stays cheap, and Ctrl-C while torch loads is
# caught by the CLI.  ``from hf_streamline import X`` works for every name, as before.
_LAZY: dict[str, str] = {
    "get_decoder_layers": "architecture", "keep_only_layers": "architecture", "num_layers": "architecture",
    "skip_layers": "architecture",
    "CalibrationConfig": "calibration", "CalibrationData": "calibration", "build_calibration": "calibration",
    "load_model_and_tokenizer": "loading",
    "evaluate_perplexity": "perplexity",
    "StreamlinePlan": "plan", "apply_plan": "plan",
    "prune": "pruning", "remove_layers": "pruning", "save_pruned": "pruning",
    "SCORERS": "scores", "ScoreResult": "scores", "compute_scores": "scores",
    "Target": "selection",
    "replace_linear": "replacement.linear",
}


__getattr__, __dir__ = _lazy_namespace(__name__, _LAZY, globals(), submodules=True)

# ``import hf_streamline`` registers StreamlineConfig / StreamlineForCausalLM with the Auto classes (that imports
# transformers and torch).  Only the console script (``hf_streamline_entry``) defers it until its arguments are parsed
# (``hf_streamline.cli.main`` registers them then), so that ``hf-streamline --help`` is fast and Ctrl-C during the
# imports is one line.
if not getattr(_sys.modules.get("hf_streamline_entry"), "DEFER_REGISTRATION", False):
    from . import modeling  # noqa: F401,E402

__all__ = [
    "CalibrationConfig", "CalibrationData", "SCORERS", "ScoreResult", "StreamlineError", "StreamlinePlan", "Target",
    "__version__", "apply_plan", "build_calibration", "compute_scores", "evaluate_perplexity", "get_decoder_layers",
    "keep_only_layers", "load_model_and_tokenizer", "num_layers", "prune", "remove_layers", "replace_linear",
    "save_pruned", "skip_layers",
]
