"""``StreamlineTrainingArguments``: ``transformers.TrainingArguments`` with the defaults a partial-training run needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class StreamlineTrainingArguments(TrainingArguments):
    """Training arguments of :class:`~hf_streamline.training.StreamlineTrainer`.

    Differs from ``TrainingArguments`` in its defaults (custom batch keys survive, evaluation reports the objective's
    loss only, nothing is reported to external trackers) and adds the objective and its options.
    """

    objective: str = field(default="mse", metadata={"help": "Training objective, a name from hf_streamline.training.OBJECTIVES (mse | lm | ...)."})
    kl_weight: float = field(default=0.0, metadata={"help": "lm objective: weight of KL(teacher || student) on the logits (0 = next-token loss only)."})
    kl_temperature: float = field(default=1.0, metadata={"help": "lm objective: softmax temperature of the KL term."})
    kd_top_k: int | None = field(default=None, metadata={"help": "lm objective with kl_weight > 0, replacement training: cache the dense model's top-K logits (and its input to the block, which the frozen layers below compute) to disk in one pass before training, instead of a copy of the dense model running beside the student at every step (None)."})
    lm_weight: float = field(default=1.0, metadata={"help": "lm objective: weight of the next-token cross-entropy."})
    mse_mask: str = field(default="causal", metadata={"help": "mse objective: 'causal' passes the block's causal mask to a decoder-layer replacement exactly as at inference; 'none' trains it bidirectionally (reproduces a published bug; for tests only)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep custom batch keys (hidden states, masks); must stay False for the Streamline objectives."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation reports the objective's loss only (no logits are gathered)."})
    report_to: str | list[str] | None = field(default="none", metadata={"help": "Integrations to report to (default: none)."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (default 5e-4: the trained modules are small and fresh)."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy: no | steps | epoch (checkpoints hold only the trained parameters)."})
    logging_steps: float = field(default=10, metadata={"help": "Log the training loss every N steps."})
    dataloader_pin_memory: bool = field(default=False, metadata={"help": "Pin memory in the data loader."})
