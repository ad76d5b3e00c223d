"""The options that the library, the command line and recipes share, declared once and torch-free: the closed sets of
values an option accepts, value parsers, and the configurations whose fields are options (``MergeConfig``,
``ReplacementOptions``, ``LinearOptions``).

Nothing here imports torch, transformers or peft: the command line builds its parsers from these and from the plug-in
tables of :mod:`hf_streamline.plugins` before it knows whether the command will need them (``hf-streamline --help``,
``run --validate-only``; tests/test_cli_startup.py).  The modules that use a value re-export it under its old name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import StreamlineError

# -- selection (hf_streamline.sublayers, hf_streamline.unit_search) -------------------------------------------------
UNIT_CHOICES = ("layer", "attention", "mlp", "sublayer")  # what one unit of removal is (`sublayer` = both kinds)
SUBLAYER_EXPORTS = ("streamline", "zeroed")  # how a model with sub-blocks removed is saved
FITNESSES = ("kl", "ppl")  # the unit search's fitness: KL to the dense model, or the pruned model's own NLL

# -- replacement (hf_streamline.replacement) ------------------------------------------------------------------------
ACTIVATION_MODES = ("stream", "cache")  # a replacement's training pairs: recomputed each epoch, or cached on disk
SOLVERS = ("lstsq", "cosine")  # the linear map's fit
BLOCK_SELECTIONS = ("residual", "angular")  # the linear fold's block choice
ON_NO_GAIN = ("remove", "error", "keep")  # when the fold does not beat plain removal on held-out text

# -- similarity maps (hf_streamline.merging.cka) --------------------------------------------------------------------
SIMILARITY_MAP_KINDS = ("cka_linear", "cka_rbf", "cosine")

# -- healing (hf_streamline.healing) --------------------------------------------------------------------------------
DATA_FORMATS = ("auto", "text", "alpaca")  # how training records are read
PROMPT_TEMPLATES = ("auto", "alpaca", "chat")  # how instruction records become text
COMPARE_METHODS = ["partial:0", "partial:1", "partial:3", "lora", "qlora", "distill"]  # compare-healing's default

# ``last_k = "cut"``: every layer above the first removed one (the layers whose input the pruning changed);
# ``"cut+N"``: those and the N layers just below the cut (whose output the pruned layers used to read)
LAST_K_CUT = "cut"


def parse_last_k(value: Any) -> int | str:
    """``last_k`` as given on the command line or in a recipe: a number of layers, ``"cut"`` or ``"cut+N"``."""
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        head, plus, below = text.partition("+")
        if head == LAST_K_CUT and (not plus or below.isdigit()):
            return LAST_K_CUT if not plus or int(below) == 0 else f"{LAST_K_CUT}+{int(below)}"
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StreamlineError("give a number of layers, 'cut' (every layer above the first removed one) or 'cut+N' "
                              "(those and the N layers below the cut)", argument="last_k", value=value) from None


parse_last_k.__name__ = "number of layers, 'cut' or 'cut+N'"


def is_cut(last_k: Any) -> bool:
    """Whether ``last_k`` is relative to the cut (``"cut"`` / ``"cut+N"``) and so needs the pruned model's plan."""
    return isinstance(parse_last_k(last_k), str)


# -- healing (hf_streamline.healing) ----------------------------------------------------------------------------------
TIED_POLICIES = ("auto", "untie", "train-shared")  # what partial training does with tied embeddings

# -- merging (hf_streamline.merging) --------------------------------------------------------------------------------
SCORINGS = ("cumulative", "marginal")


@dataclass
class MergeConfig:
    """How to search for merge windows.  Give exactly one of ``threshold``, ``remove`` or ``ratio``."""

    threshold: float | None = field(default=None, metadata={"help": "Similarity threshold in (0, 1]: windows grow while the merged model's output similarity stays above it (paper mode)."})
    remove: int | None = field(default=None, metadata={"help": "Target mode: remove exactly this many layers (threshold found by bisection)."})
    ratio: float | None = field(default=None, metadata={"help": "Target mode: remove this fraction of the layers, in (0, 1)."})
    rule: str = field(default="drop", metadata={"help": "How a window's parameters become one layer: drop (default: keep the bottom layer, i.e. plain removal of the window's other layers), top_weights (what the authors' code computes), rdsc (the papers' formula) or average."})
    similarity: str = field(default="token_cosine", metadata={"help": "What the search thresholds: logits_kl (exp(-mean KL) of the next-token distributions), token_cosine (default: mean per-token cosine of the final outputs, first token left out), output_cosine (the SLM paper: cosine of the flattened final outputs) or cka (linear CKA of the final outputs)."})
    scoring: str = field(default="marginal", metadata={"help": "What the threshold judges: cumulative (the paper: the merged model's similarity to the original) or marginal (default: the similarity a window keeps relative to the model before it, s_trial / s_current: the window's own cost)."})
    batch_size: int = field(default=8, metadata={"help": "Calibration sequences per forward pass."})
    reuse_hidden: bool = field(default=True, metadata={"help": "Record every layer input once and run only the layers from the window up in a trial."})
    naive: bool = field(default=False, metadata={"help": "Reference search of the released code: deep copy + full forward per trial (slow; for comparison)."})
    tolerance: float = field(default=1e-4, metadata={"help": "Target mode: bisection stops when the threshold interval is this narrow."})
    max_gram_tokens: int = field(default=1024, metadata={"help": "similarity=cka: tokens per HSIC minibatch."})
    skip_first_tokens: int | None = field(default=None, metadata={"help": "Leave the first N real tokens of every calibration sequence out of the similarity (default: the criterion's own, token_cosine 1, the others 0)."})
    kl_topk: int = field(default=256, metadata={"help": "similarity=logits_kl: cache the original model's top-K logits per token (0 = full vocabulary, recomputed per trial)."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def target_count(self, L: int) -> int | None:
        given = [x for x in (self.threshold, self.remove, self.ratio) if x is not None]
        if len(given) != 1:
            raise StreamlineError("give exactly one of threshold, remove or ratio", argument="config")
        max_k = L - 2
        if self.scoring not in SCORINGS:
            raise StreamlineError(f"unknown; choose from {list(SCORINGS)}", argument="config.scoring", value=self.scoring)
        if self.skip_first_tokens is not None and int(self.skip_first_tokens) < 0:
            raise StreamlineError("must be >= 0", argument="config.skip_first_tokens", value=self.skip_first_tokens)
        if int(self.kl_topk or 0) < 0:
            raise StreamlineError("must be >= 0 (0 = the full vocabulary)", argument="config.kl_topk", value=self.kl_topk)
        if self.threshold is not None:
            t = float(self.threshold)
            if not (0.0 < t <= 1.0):
                raise StreamlineError("must be in (0, 1] (a similarity threshold)", argument="config.threshold",
                                      value=self.threshold)
            return None
        if self.ratio is not None:
            if not (0.0 < float(self.ratio) < 1.0):
                raise StreamlineError("must be strictly between 0 and 1", argument="config.ratio", value=self.ratio)
            k = max(1, int(round(float(self.ratio) * L)))
        else:
            k = int(self.remove)
            if k < 1:
                raise StreamlineError("merge away at least one layer", argument="config.remove", value=self.remove)
        if k > max_k:
            raise StreamlineError(f"cannot merge away {k} of {L} layers: the last layer is never merged and a window "
                                  f"keeps its bottom layer, so at most {max_k} can go (ask for {max_k} or fewer)",
                                  argument="config.ratio" if self.ratio is not None else "config.remove",
                                  value=self.ratio if self.ratio is not None else self.remove)
        return k


# -- replacement (hf_streamline.replacement; ReplaceArguments takes the defaults and help from these) ------------
@dataclass
class ReplacementOptions:
    """How the replacement module is built."""

    width: int | None = field(default=None, metadata={"help": "mlp: hidden width of the feed-forward module (default: the base model's MLP width)."})
    init: str = field(default="first_layer", metadata={"help": "mlp: 'first_layer' (copy the block's first MLP and its pre-norm) or 'identity' (copy the norm and input projections, zero output projection: starts exactly as plain removal)."})
    gated: bool | None = field(default=None, metadata={"help": "mlp: SwiGLU-style gate (default: as the base model's MLP)."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LinearOptions:
    """How the linear maps are fitted, chosen and checked (recorded in the plan)."""

    solver: str = field(default="lstsq", metadata={"help": "lstsq (closed form, float64 normal equations) | cosine (Adam on the token cosine distance, from the lstsq solution)."})
    ridge: float = field(default=0.0, metadata={"help": "λ relative to the mean diagonal of XᵀX (0 = plain least squares)."})
    skip_first_tokens: int = field(default=0, metadata={"help": "Leave the first K positions of every sequence out of the fit."})
    select: str = field(default="residual", metadata={"help": "Block choice: residual (the fit's relative residual) | angular (ReplaceMe: angular distance at the last token)."})
    heldout_samples: int | None = field(default=None, metadata={"help": "Calibration sequences held out for the check (default: one in eight, at least 1; 0 = no check)."})
    on_no_gain: str = field(default="remove", metadata={"help": "When the fold does not lower held-out perplexity: remove (plain removal, with a warning) | error | keep (fold anyway)."})
    cosine_epochs: int = field(default=10, metadata={"help": "cosine: passes over the calibration tokens."})
    cosine_lr: float = field(default=1e-4, metadata={"help": "cosine: Adam learning rate."})
    cosine_token_batch: int = field(default=1024, metadata={"help": "cosine: tokens per Adam step."})
    activations: str = field(default="stream", metadata={"help": "cosine: stream (re-run the model per epoch) | cache (disk shards, one in RAM at a time)."})
    seed: int = field(default=0, metadata={"help": "cosine: seed of the token shuffling."})

    def validate(self) -> None:
        if self.solver not in SOLVERS:
            raise StreamlineError(f"unknown; use one of {list(SOLVERS)}", argument="solver", value=self.solver)
        if self.select not in BLOCK_SELECTIONS:
            raise StreamlineError(f"unknown; use one of {list(BLOCK_SELECTIONS)}", argument="select", value=self.select)
        if self.on_no_gain not in ON_NO_GAIN:
            raise StreamlineError(f"unknown; use one of {list(ON_NO_GAIN)}", argument="on_no_gain",
                                  value=self.on_no_gain)
        if self.activations not in ACTIVATION_MODES:
            raise StreamlineError(f"unknown; use one of {list(ACTIVATION_MODES)}", argument="activations",
                                  value=self.activations)
        if self.skip_first_tokens < 0:
            raise StreamlineError("must be >= 0", argument="skip_first_tokens", value=self.skip_first_tokens)
        if not (self.ridge >= 0 and math.isfinite(self.ridge)):
            raise StreamlineError("must be a finite number >= 0", argument="ridge", value=self.ridge)
        if self.heldout_samples is not None and self.heldout_samples < 0:
            raise StreamlineError("must be >= 0", argument="heldout_samples", value=self.heldout_samples)
        if self.cosine_epochs < 1 or self.cosine_token_batch < 1 or not self.cosine_lr > 0:
            raise StreamlineError("cosine solver: epochs and token batch must be >= 1 and the learning rate > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- healing (hf_streamline.healing; HealingConfig.training_args) -----------------------------------------------------
def parse_training_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)``: a ``transformers.TrainingArguments`` field and its value, read as a whole
    number, a number, true/false/none or else text (``bf16=true``, ``max_grad_norm=0.5``, ``optim=adafactor``)."""
    key, sep, raw = str(text).partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise ValueError(f"{text!r}: expected KEY=VALUE with KEY a transformers.TrainingArguments field, e.g. "
                         "gradient_checkpointing=true")
    raw = raw.strip()
    if raw[:1] in "{[":  # a mapping or a list (gradient_checkpointing_kwargs={"use_reentrant": false}): JSON
        import json

        try:
            return key, json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{text!r}: the value is not valid JSON ({exc})") from None
    words = {"true": True, "false": False, "none": None, "null": None}
    if raw.lower() in words:
        return key, words[raw.lower()]
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw
