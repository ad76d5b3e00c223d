"""``hf-streamline heal``: every option, its default and its help (the one declaration; hf_streamline.arguments).

Also the groups it shares: :class:`HealingArguments` (data, methods, training; ``compare-healing`` takes them too) and
:class:`CheckpointArguments` (the trainer's resumable checkpoints; :class:`KeepCheckpointsArguments` alone for a
command that trains without them).

The defaults are written here, not read from ``hf_streamline.healing``'s ``HealingConfig`` / ``HealingDataConfig``:
that module imports torch, and this one must not (``hf-streamline --help``, ``run --validate-only``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import DATA_FORMATS, PROMPT_TEMPLATES, TIED_POLICIES, parse_last_k
from .base import option
from .common import BaseModelArguments, KeepCheckpointsArguments, ModelArguments, OutputArguments, hub_model_id



def _training_arg(text: str) -> str:
    """``--training-arg``'s type: KEY=VALUE checked, kept as written (the library reads the value)."""
    import argparse

    from ..options import parse_training_arg

    try:
        parse_training_arg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return str(text)


@dataclass
class HealingArguments:
    """The data, method and training options of a healing run (``heal`` and ``compare-healing``)."""

    # -- data
    data: list[str] | None = option(required=True, metavar="SOURCE", group="data",
                                    help="training text: a text file, a .json/.jsonl file (text or Alpaca instruction "
                                         "records), dataset:NAME[:CONFIG]:SPLIT[:COLUMN], or a datasets id of Alpaca "
                                         "data (yahma/alpaca-cleaned); several sources of one kind are pooled and "
                                         "shuffled")
    data_format: str = option("auto", choices=DATA_FORMATS, group="data", help="auto (default) | text | alpaca")
    template: str = option("auto", choices=PROMPT_TEMPLATES, group="data",
                           help="prompt of instruction data: auto (default: the tokenizer's chat template where it has "
                                "one, else alpaca), alpaca, or chat (the tokenizer's chat template)")
    text_column: str = option("text", group="data", help="text field of .jsonl / dataset records (default text)")
    seq_len: int = option(256, group="data", help="tokens per window / cutoff per example (default 256)")
    eval_size: int | None = option(group="data", help="windows / examples held out for validation and best-checkpoint "
                                                      "selection (default 5%%, at most 64; 0 = none)")
    max_examples: int | None = option(group="data", help="use at most this many training windows / examples")
    # -- methods
    last_k: int | str = option(3, parse=parse_last_k, group="methods",
                               help="partial / distill: train the last K decoder layers (+ lm_head + final norm; "
                                    "default 3); 'cut' = every layer above the first removed one (from the folder's "
                                    "streamline_plan.json), 'cut+N' = those and the N layers below the cut")
    tied_policy: str = option("auto", choices=TIED_POLICIES, group="methods",
                              help="tied embeddings: auto (default) unties lm_head only where the untied model stays "
                                   "no larger than its base model, else trains the shared matrix; untie (the input "
                                   "embedding never changes, one vocabulary x hidden matrix more); train-shared "
                                   "(changes the input embedding; recorded in the plan)")
    freeze_lm_head: bool = option(False, group="methods",
                                  help="partial / distill: train only the final norm and the last K layers; lm_head "
                                       "(tied or not) stays as it is, so the model keeps its size and a step is "
                                       "cheaper")
    lora_r: int = option(16, group="methods", help="LoRA rank (default 16)")
    lora_alpha: int = option(32, group="methods", help="LoRA alpha (default 32)")
    lora_dropout: float = option(0.05, group="methods", help="LoRA dropout (default 0.05)")
    lora_targets: str | None = option(group="methods",
                                      help="comma-separated module names that get adapters (e.g. q_proj,v_proj); "
                                           "default: every linear layer inside the decoder layers")
    qlora_quant_type: str = option("nf4", choices=("nf4", "fp4"), group="methods",
                                   help="QLoRA 4-bit type (default nf4)")
    distill_subset: str = option("partial", choices=("partial", "lora"), group="methods",
                                 help="distill: what trains (default partial = lm_head + norm + last K layers)")
    temperature: float = option(1.0, group="methods", help="distill: KL temperature (default 1)")
    kl_weight: float = option(1.0, group="methods", help="distill: weight of the KL term (default 1)")
    lm_weight: float = option(0.0, group="methods", help="distill: weight of the LM loss mixed in (default 0)")
    kd_top_k: int | None = option(metavar="K", group="methods",
                                  help="distill: cache the teacher's top-K logits to disk in one pass before training "
                                       "and free the teacher (it is never in memory beside the student while "
                                       "training); default: the teacher runs at every step")
    no_prefix_cache: bool = option(False, group="methods",
                                   help="distill with --kd-top-k: run the frozen layers below the lowest trained one "
                                        "at every step instead of reading their output from the teacher's pass "
                                        "(default: read, where they are the teacher's own layers)")
    # -- training
    learning_rate: float | None = option(group="training",
                                         help="peak learning rate (default: partial/distill 1e-4, lora/qlora 5e-4)")
    batch_size: int = option(4, group="training", help="sequences per micro-batch (default 4)")
    grad_accum: int = option(1, group="training", help="gradient-accumulation steps (default 1)")
    epochs: float = option(2.0, group="training", help="epochs without --max-steps/--budget-tokens (default 2)")
    lr_scheduler: str = option("cosine", group="training", help="transformers scheduler name (default cosine)")
    warmup_ratio: float = option(0.0, group="training", help="fraction of steps for warm-up (default 0)")
    weight_decay: float = option(0.0, group="training", help="AdamW weight decay (default 0)")
    eval_steps: int | None = option(group="training", help="validate every N steps (default: 4 times per run)")
    no_best_checkpoint: bool = option(False, group="training",
                                      help="keep the last weights instead of the best validation checkpoint")
    seed: int = option(0, group="training", help="seed (default 0)")
    training_args: list[str] = option(default_factory=list, flags=["--training-arg"], action="append",
                                      metavar="KEY=VALUE", group="training", parse=_training_arg, pairs=True,
                                      help="a transformers.TrainingArguments field for the Trainer, e.g. "
                                           "gradient_checkpointing=true, bf16=true, max_grad_norm=0.5 (repeatable; "
                                           "the fields the options above set are refused)")


@dataclass
class CheckpointArguments(KeepCheckpointsArguments):
    """The trainer's checkpoints that resume: ``--save-steps``, ``--resume-from-checkpoint``, ``--train-output`` and
    ``--keep-checkpoints`` (read by hf_streamline.training.checkpoints' ``checkpoint_plan`` and
    ``keep_checkpoints_on_failure``)."""

    save_steps: int = option(0, group="checkpoints",
                             help="write a checkpoint that resumes (trained parameters, optimizer, scheduler, RNG) "
                                  "every N steps into the training folder (default 0: none)")
    resume_from_checkpoint: str | None = option(metavar="PATH|latest", group="checkpoints",
                                                help="continue an interrupted run from this checkpoint-N folder, or "
                                                     "the newest one in the training folder (latest); give the same "
                                                     "options as that run")
    train_output: str | None = option(group="checkpoints",
                                      help="training folder for checkpoints (default: OUTPUT.training)")


def _method_help() -> str:
    from ..plugins import HEALING_METHODS

    return f"{' | '.join(sorted(HEALING_METHODS))}, or a spec such as partial:1, distill:lora (default partial)"


SELF_DISTILL = "self-distillation data (any --method; needs --teacher)"
ITERATIVE = "iterative pruning (--model is then the dense model)"


@dataclass
class HealArguments(OutputArguments, CheckpointArguments, HealingArguments, BaseModelArguments, ModelArguments):
    """Train a pruned model back (partial layers, LoRA, QLoRA, distillation); with ``remove``, prune the dense
    ``model`` in steps and heal after every one."""

    command: ClassVar[str] = "heal"

    base_model: str | None = option(parse=hub_model_id, metavar="ORG/NAME",
                                    help="Hub id of the base model the plan applies to, where it was loaded from a "
                                         "local folder: --model itself for a dense model, its dense base for a pruned "
                                         "--model; recorded in the plan and the model card (base_model)")
    teacher: str | None = option(help="the dense model (needed by --method distill and --self-distill)")
    method: str = option("partial", help=_method_help)
    max_steps: int | None = option(exclusive="budget", help="optimizer steps")
    budget_tokens: int | None = option(exclusive="budget", help="train on about this many tokens")
    merge: bool = option(False, help="lora/qlora: merge the adapter into the weights and save a plain checkpoint "
                                     "(default: save the adapter folder, which peft's AutoPeftModelForCausalLM loads)")
    # -- self-distillation data
    self_distill: int | None = option(metavar="N", group=SELF_DISTILL,
                                      help="heal on continuations of N tokens that the --teacher generates (greedy, "
                                           "stopping at EOS) from prompts of the training data: text: the first "
                                           "--self-distill-prompt-len tokens of each window (the loss on the generated "
                                           "tokens only); instructions: the formatted prompt, the response replaced by "
                                           "the teacher's. Validation stays the original data; the cost is recorded "
                                           "(self_distill). Default: off")
    self_distill_prompt_len: int = option(32, metavar="P", group=SELF_DISTILL,
                                          help="text data: prompt tokens taken from each training window (default 32)")
    self_distill_sample: bool = option(False, group=SELF_DISTILL,
                                       help="sample (seeded by --seed) instead of greedy decoding")
    self_distill_temperature: float = option(1.0, metavar="T", group=SELF_DISTILL,
                                             help="--self-distill-sample: temperature (default 1)")
    self_distill_batch_size: int = option(32, metavar="B", group=SELF_DISTILL,
                                          help="prompts the teacher continues together (independent of --batch-size: "
                                               "decoding is bound by per-step overhead, so on SmolLM2-135M on 2 CPU "
                                               "cores 32 prompts generate 3x faster per token than 4); lower it if the "
                                               "teacher's KV cache does not fit (default 32)")
    # -- iterative pruning
    remove: int | None = option(group=ITERATIVE, help="prune this many layers, healing after every --step")
    step: int | None = option(group=ITERATIVE, help="layers removed per step (default: all at once)")
    metric: str = option("block_influence", group=ITERATIVE,
                         help="score that chooses the layers (default block_influence)")
    calibration: str | None = option(group=ITERATIVE,
                                     help="calibration text for the scores (default: the first --data source if text)")
    calibration_samples: int = option(32, group=ITERATIVE, help="calibration sequences (default 32)")
    # -- evaluation
    eval_text: str | None = option(group="evaluation", help="text file: perplexity before and after healing")
    ppl_tokens: int | None = option(group="evaluation", deprecated=("--eval-tokens",),
                                    help="score at most this many tokens of --eval-text")
