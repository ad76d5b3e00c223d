"""The objective interface and its registry (one objective per file, each registered here by name)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...plugins import OBJECTIVES


class Objective:
    """A training loss for :class:`~hf_streamline.training.StreamlineTrainer`.

    ``compute_loss`` returns ``(loss, outputs)``; the loss is a mean over the micro-batch, so the trainer divides it by
    the gradient-accumulation steps (``loss_is_scaled_for_ga = False``).  ``label_names``: a batch key that is always
    present, so that evaluation goes through ``compute_loss``.  ``default_trainable``: regexes of the parameter names
    trained when the caller names none (``None``: keep the model's ``requires_grad`` flags).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    label_names: ClassVar[list[str]] = ["labels"]
    loss_is_scaled_for_ga: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False

    def __init__(self, **options: Any):
        self.options = options

    def default_trainable(self, model: torch.nn.Module) -> list[str] | None:
        return None

    def compute_loss(self, trainer: Any, model: torch.nn.Module, inputs: dict[str, Any],
                     num_items_in_batch: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError


register_objective = OBJECTIVES.register


def get_objective(name: str | Objective, **options: Any) -> Objective:
    return name if isinstance(name, Objective) else OBJECTIVES.create(name, **options)
