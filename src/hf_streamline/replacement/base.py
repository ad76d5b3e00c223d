"""The replacement-kind interface and its registry (one kind per file, each registered here by name)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..options import ReplacementOptions  # noqa: F401  (declared with the other shared options)
from ..plugins import KINDS


class ReplacementKind:
    """One way to stand in for a block of decoder layers.

    ``build``: the standalone module (trained on the block's input/output before it is installed), or ``None``.
    ``record``: the JSON description that the saved config keeps (``None`` for kinds saved as plain checkpoints).
    ``plain_checkpoint``: the result is an ordinary checkpoint of the base architecture.
    """

    name: ClassVar[str]
    citation: ClassVar[tuple[str, str] | None]  # (key of publishing.citations.CITATIONS, what of the paper this is) or None: cited by the model card
    description: ClassVar[str] = ""
    plain_checkpoint: ClassVar[bool] = True
    trainable: ClassVar[bool] = True
    needs_layer_context: ClassVar[bool] = False  # called with the mask / rotary embeddings of the block's first layer

    def build(self, model: nn.Module, start: int, n: int, options: ReplacementOptions) -> nn.Module | None:  # pragma: no cover
        raise NotImplementedError

    def record(self, module: nn.Module | None, slot: int, replaces: list[int]) -> dict[str, Any] | None:
        return None


register_kind = KINDS.register


def get_kind(name: str) -> ReplacementKind:
    return KINDS.create(name)
