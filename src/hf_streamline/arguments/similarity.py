"""``hf-streamline similarity``: every option, its default and its help (the one declaration;
hf_streamline.arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import SIMILARITY_MAP_KINDS
from .base import option, required
from .common import CalibrationArguments, ModelArguments, QuantizedLoadArguments



@dataclass
class SimilarityArguments(CalibrationArguments, QuantizedLoadArguments, ModelArguments):
    """A layer x layer similarity map of the decoder layers' outputs (linear/RBF CKA or cosine)."""

    command: ClassVar[str] = "similarity"

    calibration: str | None = required(CalibrationArguments, "calibration")
    kind: str = option("cka_linear", choices=SIMILARITY_MAP_KINDS, help="similarity (default cka_linear)")
    max_gram_tokens: int = option(512, help="CKA: tokens per HSIC minibatch (Gram matrices are this size squared; "
                                            "default 512)")
    sigma: float = option(1.0, help="cka_rbf: bandwidth as a multiple of the median distance")
    skip_first_tokens: int = option(0, help="leave out each sequence's first K tokens (attention sinks with huge "
                                            "activations dominate linear CKA; default 0)")
    output: str | None = option(required=True, help="write the matrix as JSON here")
    plot: str | None = option(help="also draw a heat map PNG here")
