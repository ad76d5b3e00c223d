"""hf_streamline: make Hugging Face causal LMs shallower -- score, remove, merge or replace decoder layers, heal,
evaluate and publish."""

__version__ = "0.1.0"

from .architecture import get_decoder_layers, keep_only_layers, num_layers, skip_layers  # noqa: E402
from .calibration import CalibrationConfig, CalibrationData, build_calibration  # noqa: E402
from .errors import StreamlineError  # noqa: E402
from .loading import load_model_and_tokenizer  # noqa: E402
from .perplexity import evaluate_perplexity  # noqa: E402
from .plan import StreamlinePlan, apply_plan  # noqa: E402
from .pruning import prune, remove_layers, save_pruned  # noqa: E402
from .scores import SCORERS, ScoreResult, compute_scores  # noqa: E402
from .selection import Target  # noqa: E402
from . import modeling  # noqa: F401,E402 - registers StreamlineConfig / StreamlineForCausalLM with the Auto classes

__all__ = [
    "CalibrationConfig", "CalibrationData", "SCORERS", "ScoreResult", "StreamlineError", "StreamlinePlan", "Target",
    "__version__", "apply_plan", "build_calibration", "compute_scores", "evaluate_perplexity", "get_decoder_layers",
    "keep_only_layers", "load_model_and_tokenizer", "num_layers", "prune", "remove_layers", "save_pruned", "skip_layers",
]
