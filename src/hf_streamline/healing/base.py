"""The healing-method interface, its configuration and its registry (one method per file, each registered here).

A method decides *which* parameters train and *how the result is kept*; the training loop itself is
:class:`~hf_streamline.training.StreamlineTrainer` with the ``lm`` objective (next-token loss, plus KL to the dense
teacher for ``distill``).  Method specs on the command line: ``partial:K``, ``lora``, ``lora:R`` (rank), ``qlora``,
``distill`` (KL on ``partial:K``), ``distill:lora``, ``distill:partial:K``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import StreamlineError
from ..plugins import HEALING_METHODS

# auto (default): untie lm_head only where the untied model stays no larger than its base model, else train-shared
from ..arguments.heal import HealArguments as CLI  # the defaults of the options `heal` takes (declared there once)
from ..options import TIED_POLICIES  # noqa: E402,F401 - re-exported


@dataclass
class HealingConfig:
    """Everything that decides one healing run (stored in the plan's ``healing`` record)."""

    method: str = field(default="partial", metadata={"help": "partial | lora | qlora | distill (or a spec such as partial:1, distill:lora)."})
    last_k: int | str = field(default=CLI.last_k, metadata={"help": "partial: train lm_head, the final norm and the last K decoder layers (0 = lm_head + norm only); 'cut' = every layer above the first removed one (read from the pruned model's plan); 'cut+N' = those and the N layers below the cut."})
    tied_policy: str = field(default=CLI.tied_policy, metadata={"help": "tied input/output embeddings: 'auto' (default) unties only where the untied model stays no larger than its base model (base_parameters), else trains the shared matrix; 'untie' gives lm_head its own copy (the input embedding never changes, the model grows by one vocabulary x hidden matrix); 'train-shared' trains the shared matrix (the input embedding changes too; recorded in the plan)."})
    freeze_lm_head: bool = field(default=CLI.freeze_lm_head, metadata={"help": "partial / distill:partial: keep lm_head (and a tied input embedding) frozen and train only the final norm and the last K decoder layers; the model keeps its size and a step is cheaper (no weight gradient of the vocabulary x hidden matrix)."})
    base_parameters: int | None = field(default=None, metadata={"help": "tied_policy auto: parameters of the base (dense) model the healed model must not outgrow; None (unknown) = never untie."})
    lora_r: int = field(default=CLI.lora_r, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=CLI.lora_alpha, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=CLI.lora_dropout, metadata={"help": "LoRA dropout."})
    lora_targets: list[str] | None = field(default=CLI.lora_targets, metadata={"help": "module names (suffixes such as q_proj, self_attn.o_proj) that get adapters; default: every linear layer inside the decoder layers."})
    qlora_quant_type: str = field(default=CLI.qlora_quant_type, metadata={"help": "QLoRA 4-bit type: nf4 | fp4."})
    qlora_double_quant: bool = field(default=True, metadata={"help": "QLoRA: quantize the quantization constants too."})
    distill_subset: str = field(default=CLI.distill_subset, metadata={"help": "distill: what trains, 'partial' (lm_head + norm + last K layers) or 'lora'."})
    kl_temperature: float = field(default=CLI.temperature, metadata={"help": "distill: softmax temperature of KL(teacher || student) (the KL is scaled by T^2)."})
    kl_weight: float = field(default=CLI.kl_weight, metadata={"help": "distill: weight of the KL term."})
    lm_weight: float = field(default=CLI.lm_weight, metadata={"help": "distill: weight of the next-token loss mixed in (0 = pure distillation)."})
    kd_top_k: int | None = field(default=CLI.kd_top_k, metadata={"help": "distill: cache the teacher's top-K logits to disk in one pass before training, then free the teacher and train on KL to the renormalised top-K distribution (None = the teacher runs beside the student at every step)."})
    prefix_cache: bool = field(default=True, metadata={"help": "distill with kd_top_k: the teacher's pass also keeps its input to the lowest trained decoder layer, and training skips the frozen layers below it (used only where those layers are the teacher's own, checked on the first example; about 15% less time per step when the lower 12 of 22 layers are frozen)."})
    self_distill: int | None = field(default=CLI.self_distill, metadata={"help": "train on continuations of this many tokens that the dense teacher generates from prompts of the training data (text: the first self_distill_prompt_len tokens of each window; instructions: the formatted prompt, the response replaced); the validation split stays the original data; None = off."})
    self_distill_prompt_len: int = field(default=CLI.self_distill_prompt_len, metadata={"help": "self_distill on text data: tokens of each training window used as the prompt."})
    self_distill_sample: bool = field(default=CLI.self_distill_sample, metadata={"help": "self_distill: sample (seeded) instead of greedy decoding."})
    self_distill_temperature: float = field(default=CLI.self_distill_temperature, metadata={"help": "self_distill_sample: softmax temperature."})
    self_distill_batch_size: int = field(default=CLI.self_distill_batch_size, metadata={"help": "self_distill: prompts the teacher continues together (independent of batch_size)."})
    learning_rate: float | None = field(default=CLI.learning_rate, metadata={"help": "peak learning rate (default: the method's, partial 1e-4, lora/qlora 5e-4)."})
    max_steps: int | None = field(default=CLI.max_steps, metadata={"help": "optimizer steps (exclusive with budget_tokens)."})
    budget_tokens: int | None = field(default=CLI.budget_tokens, metadata={"help": "train on about this many tokens (sets max_steps; the same budget for every method in a comparison)."})
    epochs: float = field(default=CLI.epochs, metadata={"help": "epochs when neither max_steps nor budget_tokens is given (the paper's recipe: 2)."})
    batch_size: int = field(default=CLI.batch_size, metadata={"help": "sequences per micro-batch."})
    grad_accum: int = field(default=CLI.grad_accum, metadata={"help": "gradient-accumulation steps."})
    lr_scheduler: str = field(default=CLI.lr_scheduler, metadata={"help": "learning-rate schedule (transformers name)."})
    warmup_ratio: float = field(default=CLI.warmup_ratio, metadata={"help": "fraction of steps for linear warm-up."})
    weight_decay: float = field(default=CLI.weight_decay, metadata={"help": "AdamW weight decay."})
    eval_steps: int | None = field(default=CLI.eval_steps, metadata={"help": "evaluate on the validation split every N steps (default: 4 times per run)."})
    best_checkpoint: bool = field(default=True, metadata={"help": "keep the checkpoint with the lowest validation loss (needs a validation split)."})
    seed: int = field(default=CLI.seed, metadata={"help": "seed of data order, dropout and initialisation."})
    progress: bool = field(default=True, metadata={"help": "progress bars."})
    training_args: dict[str, Any] = field(default_factory=dict, metadata={"help": "more transformers.TrainingArguments fields for the Trainer, as trl's configs take them (e.g. {'gradient_checkpointing': True, 'bf16': True, 'max_grad_norm': 0.5}); a field this config sets itself (learning_rate, max_steps, batch size ...) is refused with the config field to use."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_spec(self, spec: str) -> "HealingConfig":
        """A copy with the method (and its short options) of a spec such as ``partial:1`` or ``distill:lora``."""
        return replace(self, **parse_method_spec(spec))


def parse_method_spec(spec: str) -> dict[str, Any]:
    """``partial:3`` -> {method: partial, last_k: 3}; ``lora:8`` -> rank 8; ``distill:lora`` / ``distill:partial:1``:
    the name picks the method, which reads the parts after it (``HealingMethod.parse_options``)."""
    parts = [p.strip() for p in str(spec).strip().split(":")]
    name, rest = parts[0], parts[1:]
    if name not in HEALING_METHODS:
        raise StreamlineError(f"healing method {spec!r} is unknown; choose from {sorted(HEALING_METHODS)} "
                              "(with options: partial:K, lora:R, qlora:R, distill, distill:lora, distill:partial:K)")
    return {"method": name, **HEALING_METHODS[name].parse_options(spec, rest)}


def spec_int(spec: str, text: str, what: str) -> int:
    """A whole-number part of a healing spec (``partial:3``), or one error line naming the spec."""
    try:
        return int(text)
    except ValueError:
        raise StreamlineError(f"healing method {spec!r}: {what} {text!r} is not an integer") from None


def config_default(name: str) -> Any:
    """The default of ``HealingConfig.<name>`` (a spec leaves out what equals it)."""
    return HealingConfig.__dataclass_fields__[name].default


@dataclass
class Prepared:
    """What a method hands to the trainer: the model to train, which parameters train, and a description."""

    model: nn.Module
    trainable: Any  # regexes / callable / None (keep requires_grad flags, e.g. a peft model)
    info: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # whatever finish() needs


class HealingMethod:
    """One way of healing a pruned model.

    ``check(model)`` refuses bad options before any work; ``prepare(model, model_path)`` returns what trains;
    ``finish(prepared)`` returns ``(model, adapter)`` after training: the plain (merged) model to evaluate and, for
    adapter methods, the peft model whose adapter can be saved on its own.
    """

    name: ClassVar[str]
    citation: ClassVar[tuple[str, str] | None]  # (key of publishing.citations.CITATIONS, what of the paper this is) or None: cited by the model card
    description: ClassVar[str] = ""
    default_learning_rate: ClassVar[float] = 1e-4
    adapter: ClassVar[bool] = False  # saves an adapter folder unless merged

    def __init__(self, config: HealingConfig):
        self.config = config

    @property
    def needs_teacher(self) -> bool:
        return False

    @property
    def learning_rate(self) -> float:
        return float(self.config.learning_rate if self.config.learning_rate is not None else self.default_learning_rate)

    def objective_options(self) -> dict[str, Any]:
        return {"objective": "lm", "kl_weight": 0.0, "lm_weight": 1.0, "kl_temperature": 1.0}

    def check(self, model: nn.Module) -> None:
        pass

    def prepare(self, model: nn.Module, model_path: str | None = None) -> Prepared:  # pragma: no cover
        raise NotImplementedError

    def finish(self, prepared: Prepared, merge: bool = True) -> tuple[nn.Module, Any]:
        return prepared.model, None

    def spec(self) -> str:
        """The short form of this method and its main option, e.g. ``partial:3`` (read back by ``parse_options``)."""
        return self.name

    @classmethod
    def parse_options(cls, spec: str, options: list[str]) -> dict[str, Any]:
        """The config fields that the parts after ``NAME:`` in a spec set; none by default."""
        if options:
            raise StreamlineError(f"healing method {spec!r}: unexpected part(s) {options}")
        return {}


register_healing_method = HEALING_METHODS.register


def get_healing_method(config: HealingConfig | str) -> HealingMethod:
    if isinstance(config, str):
        config = HealingConfig().with_spec(config)
    if ":" in config.method:
        config = config.with_spec(config.method)
    return HEALING_METHODS.create(config.method, config)


# ---- helpers shared by the methods -------------------------------------------------------------------------------

def embeddings_tied(model: nn.Module) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None:
        return False
    return out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr()


def set_tie_word_embeddings(model: nn.Module, value: bool) -> None:
    """Set ``tie_word_embeddings`` on every config of ``model`` (top level, text config, wrapped base model)."""
    seen: set[int] = set()
    for module in model.modules():
        cfg = getattr(module, "config", None)
        for c in (cfg, getattr(cfg, "text_config", None), getattr(cfg, "get_text_config", lambda: None)()):
            if c is not None and id(c) not in seen and hasattr(c, "tie_word_embeddings"):
                seen.add(id(c))
                c.tie_word_embeddings = value


def untie_output_embeddings(model: nn.Module) -> bool:
    """Give ``lm_head`` its own parameter initialised from the shared matrix; returns whether anything was tied."""
    if not embeddings_tied(model):
        return False
    out = model.get_output_embeddings()
    out.weight = nn.Parameter(out.weight.detach().clone(), requires_grad=out.weight.requires_grad)
    set_tie_word_embeddings(model, False)
    return True


def estimate_base_parameters(model: nn.Module, num_layers_before: int | None = None,
                             teacher: nn.Module | None = None) -> int:
    """Parameters of the base (dense) model of ``model``: the teacher's where there is one, else ``model``'s plus
    the removed layers (``num_layers_before`` minus its layers, each the size of its average decoder layer)."""
    if teacher is not None:
        return count_parameters(teacher)
    from ..architecture import get_decoder_layers

    total = count_parameters(model)
    layers = list(get_decoder_layers(model))
    if num_layers_before is None or not layers or num_layers_before <= len(layers):
        return total
    per_layer = sum(count_parameters(layer) for layer in layers) / len(layers)
    return int(total + (num_layers_before - len(layers)) * per_layer)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of ``model`` (``parameters()`` yields a tied weight once), 4-bit packed weights at their real size."""
    total = 0
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # packed 4-bit weights: two values per byte
            n = int(getattr(p, "quant_state", None).shape.numel()) if getattr(p, "quant_state", None) is not None else n * 2
        total += n
    return total


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
