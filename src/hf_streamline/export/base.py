"""The exporter interface and its registry (one format per file, each registered here by name).

An exporter turns a loaded (pruned) causal LM into a deployable folder and can load that folder back and return
logits, so every export is checked against torch on a fixed input before it is moved into place.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import StreamlineError
from ..plugins import EXPORTERS


@dataclass
class ExportConfig:
    """Options shared by every export format (a format ignores the ones that do not concern it)."""

    check_batch: int = field(default=2, metadata={"help": "rows of the fixed check input (random token ids, seeded)"})
    check_seq_len: int = field(default=32, metadata={"help": "tokens per row of the fixed check input"})
    seed: int = field(default=0, metadata={"help": "seed of the fixed check input"})
    tolerance: float | None = field(default=None, metadata={
        "help": "fail when max |logits(export) - logits(torch)| exceeds this x max(1, max |logit|) (default: the "
                "format's own; onnx 1e-4, quanto: none, reported only)"})
    verify: bool = field(default=True, metadata={"help": "compare the written export with torch before finishing"})
    opset: int | None = field(default=None, metadata={"help": "onnx: opset version (default: onnxscript's latest)"})
    optimize: bool = field(default=True, metadata={"help": "onnx: run the onnxscript graph optimizer"})
    quantize_lm_head: bool = field(default=False, metadata={
        "help": "quanto: also quantize the output projection (with tied embeddings this unties it and grows the "
                "checkpoint, since the input embedding stays full precision)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom modeling code from the folder"})

    def __post_init__(self) -> None:
        if self.check_batch < 1 or self.check_seq_len < 2:
            raise StreamlineError(f"check input {self.check_batch}x{self.check_seq_len} is too small; "
                                  "use at least 1 row of 2 tokens")
        if self.tolerance is not None and self.tolerance < 0:
            raise StreamlineError(f"tolerance {self.tolerance} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Exporter:
    """Base class.  Subclasses write the export into a folder and read it back as a logits function."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    backend: ClassVar[str] = ""  # which library does the work, for reports and docs
    extra: ClassVar[str] = ""  # the pip extra that installs what it needs
    required_modules: ClassVar[tuple[str, ...]] = ()
    default_tolerance: ClassVar[float | None] = None
    weight_patterns: ClassVar[tuple[str, ...]] = ()  # files that hold the weights (for the size on disk)

    def check_environment(self) -> None:
        missing = [m for m in self.required_modules if importlib.util.find_spec(m) is None]
        if missing:
            raise StreamlineError(f"format {self.name!r} needs {', '.join(missing)}, which is not installed: "
                                  f"pip install 'hf-streamline[{self.extra}]'")

    def export(self, model: Any, output: Path, config: ExportConfig) -> dict[str, Any]:  # pragma: no cover
        """Write ``model`` into the (empty, temporary) folder ``output``; return details for the report."""
        raise NotImplementedError

    def load(self, folder: Path, config: ExportConfig) -> Any:  # pragma: no cover
        """Load an export written by :meth:`export`."""
        raise NotImplementedError

    def logits(self, loaded: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Float32 logits of ``loaded`` for one batch, shape (batch, seq, vocab)."""
        raise NotImplementedError


register_exporter = EXPORTERS.register


def get_exporter(name: str) -> Exporter:
    return EXPORTERS.create(name)


def check_inputs(vocab_size: int, config: ExportConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed check input: seeded random token ids (no special tokens) with the first row left-padded by 3."""
    gen = torch.Generator().manual_seed(config.seed)
    low = min(3, vocab_size - 1)
    ids = torch.randint(low, vocab_size, (config.check_batch, config.check_seq_len), generator=gen)
    mask = torch.ones_like(ids)
    if config.check_batch > 1 and config.check_seq_len > 4:
        mask[0, :3] = 0  # one padded row, so the mask path is checked too
    return ids, mask


def compare_logits(reference: torch.Tensor, other: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, float]:
    """Differences on the real (unpadded) positions: max / mean |Δ|, the logit scale, and argmax agreement."""
    if reference.shape != other.shape:
        raise StreamlineError(f"export returned logits of shape {tuple(other.shape)}, torch {tuple(reference.shape)}")
    keep = attention_mask.bool()
    ref, out = reference.float()[keep], other.float()[keep]
    diff = (ref - out).abs()
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "logit_std": float(ref.std()), "logit_max_abs": float(ref.abs().max()),
            "argmax_agreement": float((ref.argmax(-1) == out.argmax(-1)).float().mean()),
            "positions": int(keep.sum())}
