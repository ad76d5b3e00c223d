"""``hf-streamline replace``: every option, its default and its help (the one declaration; hf_streamline.arguments).

``--width`` / ``--init`` are the fields of :class:`hf_streamline.options.ReplacementOptions` and the linear options
those of :class:`hf_streamline.options.LinearOptions`: they take their default and help from there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import ACTIVATION_MODES, BLOCK_SELECTIONS, ON_NO_GAIN, SOLVERS, LinearOptions, ReplacementOptions
from .base import field_option, option
from .common import (BaseModelArguments, CalibrationArguments, KeepCheckpointsArguments, ModelArguments,
                     OutputArguments)

LINEAR = "linear (--replacement linear: training-free, ReplaceMe)"


def _kinds() -> list[str]:
    from ..plugins import KINDS

    return sorted(KINDS)


@dataclass
class ReplaceArguments(OutputArguments, KeepCheckpointsArguments, CalibrationArguments, BaseModelArguments,
                       ModelArguments):
    """Replace a block of layers by one trained module (LLM-Streamline) or a fitted linear map (ReplaceMe)."""

    command: ClassVar[str] = "replace"

    # replacement
    block_size: int | None = option(group="replacement",
                                    help="layers in the block (the paper: 9 -> 1 module); required unless "
                                         "--replacement linear --layers names the blocks")
    block_start: int | None = option(group="replacement",
                                     help="first layer of the block (default: chosen by block_cosine)")
    replacement: str = option("mlp", group="replacement", choices=_kinds,
                              help="what goes in the block's place (default mlp)")
    width: int | None = field_option(ReplacementOptions, "width", group="replacement")
    init: str = field_option(ReplacementOptions, "init", group="replacement", choices=("first_layer", "identity"))
    # training
    train_data: str | None = option(group="training",
                                    help="training text: file, .jsonl or dataset:NAME[:CONFIG]:SPLIT[:COLUMN]")
    objective: str = option("mse", group="training", choices=("mse", "lm"),
                            help="mse on block activations, or lm in place (default mse)")
    kl_weight: float = option(0.0, group="training", help="lm: weight of KL to the dense model's logits (default 0)")
    kd_top_k: int | None = option(metavar="K", group="training",
                                  help="lm with --kl-weight: cache the dense model's top-K logits and its input to the "
                                       "block to disk in one pass, then train without a second copy of the model and "
                                       "without running the layers below the block (default: the dense copy runs at "
                                       "every step)")
    activations: str = option("stream", group="training", choices=ACTIVATION_MODES,
                              help="mse: stream the frozen prefix per batch, or cache block activations in disk "
                                   "shards (default stream)")
    cache_dir: str | None = option(group="training",
                                   help="cache: folder for the activation shards (default: a temporary folder)")
    train_seq_len: int = option(256, group="training", help="tokens per training window (default 256)")
    max_train_windows: int | None = option(group="training", help="use at most this many training windows")
    eval_windows: int = option(0, group="training", help="hold out this many windows to report the held-out loss")
    max_steps: int = option(200, group="training", help="optimizer steps (default 200; 0 = no training)")
    epochs: float | None = option(group="training", help="train for this many epochs instead of --max-steps")
    learning_rate: float = option(5e-4, group="training", deprecated=("--lr",),
                                  help="peak learning rate (default 5e-4)")
    grad_accum: int = option(1, group="training", help="gradient accumulation steps (default 1)")
    save_steps: int = option(0, group="training",
                             help="write a checkpoint that resumes (trained parameters, optimizer, scheduler, RNG) "
                                  "every N steps")
    resume_from_checkpoint: str | None = option(group="training", metavar="PATH|latest",
                                                help="resume training from this checkpoint folder, or the newest in "
                                                     "the training folder (latest)")
    train_output: str | None = option(group="training",
                                      help="folder for training checkpoints (default: OUTPUT.training)")
    # evaluation
    eval_text: str | None = option(help="text for perplexity dense / removed / replaced (default: the calibration)")
    ppl_tokens: int | None = option(deprecated=("--eval-tokens",),
                                    help="evaluate perplexity on at most this many tokens")
    # --replacement linear (hf_streamline.workflows.replace_linear runs it)
    solver: str = field_option(LinearOptions, "solver", group=LINEAR, choices=SOLVERS)
    blocks: int = option(1, group=LINEAR,
                         help="replace this many blocks of --block-size layers, re-fitting on the shortened model in "
                              "between")
    layers: str | None = option(group=LINEAR, metavar="A-B[,C-D]",
                                help="the block(s) to replace, original layer indices, inclusive (default: chosen by "
                                     "--select)")
    select: str = field_option(LinearOptions, "select", group=LINEAR, choices=BLOCK_SELECTIONS)
    skip_first_tokens: int = field_option(LinearOptions, "skip_first_tokens", group=LINEAR, metavar="K")
    ridge: float = field_option(LinearOptions, "ridge", group=LINEAR)
    heldout_samples: int | None = field_option(LinearOptions, "heldout_samples", group=LINEAR)
    on_no_gain: str = field_option(LinearOptions, "on_no_gain", group=LINEAR, choices=ON_NO_GAIN)
    cosine_epochs: int = field_option(LinearOptions, "cosine_epochs", group=LINEAR)
    cosine_lr: float = field_option(LinearOptions, "cosine_lr", group=LINEAR)
    cosine_token_batch: int = field_option(LinearOptions, "cosine_token_batch", group=LINEAR)
