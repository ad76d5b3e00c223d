"""The scorer interface and its registry (one scorer per file, each registered here by name)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


from ..errors import StreamlineError
from ..plugins import SCORERS


@dataclass
class ScoreResult:
    """Scores of one metric.

    ``per_layer[i]`` is layer ``i``'s value; ``per_block[n][l]`` the value of the block of ``n`` layers starting at
    ``l``.  ``importance`` says how to read them: for every metric, *lower importance = removed first*; metrics whose
    natural value reads the other way (a similarity) set ``higher_is_redundant`` and are negated for selection.
    """

    metric: str
    per_layer: list[float] | None = None
    per_block: dict[int, list[float]] = field(default_factory=dict)
    higher_is_redundant: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def layer_importance(self) -> list[float]:
        if self.per_layer is None:
            if 1 in self.per_block:
                vals = self.per_block[1]
            else:
                raise StreamlineError(f"metric {self.metric!r} has no per-layer scores")
        else:
            vals = self.per_layer
        return [-v for v in vals] if self.higher_is_redundant else list(vals)

    def block_importance(self, n: int) -> list[float]:
        """Importance of each block of ``n`` layers: the metric's own block value where it has one, else the sum."""
        if n in self.per_block:
            vals = self.per_block[n]
            return [-v for v in vals] if self.higher_is_redundant else list(vals)
        per = self.layer_importance()
        return [sum(per[l:l + n]) for l in range(len(per) - n + 1)]

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "per_layer": self.per_layer,
                "per_block": {str(k): v for k, v in self.per_block.items()},
                "higher_is_redundant": self.higher_is_redundant, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreResult":
        return cls(metric=d["metric"], per_layer=d.get("per_layer"),
                   per_block={int(k): v for k, v in (d.get("per_block") or {}).items()},
                   higher_is_redundant=bool(d.get("higher_is_redundant", False)), details=d.get("details") or {})


@dataclass
class ScoreContext:
    """What a scorer may use: the model, calibration batches, shared statistics and options."""

    model: Any
    calibration: Any = None  # CalibrationData or None
    batch_size: int = 8
    seed: int = 0
    block_sizes: list[int] | None = None
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. the one-pass similarity statistics


class Scorer:
    """Base class.  ``needs_calibration``: requires data; ``uses_similarity_pass``: reads the shared hook pass;
    ``paper_selection``: how the metric's paper chooses what to remove (``layers``: the k least important, anywhere;
    ``block``: the best contiguous block) -- what the quality benchmark runs for it."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    citation: ClassVar[tuple[str, str] | None]  # (key of publishing.citations.CITATIONS, what of the paper this is) or None: cited by the model card
    paper_selection: ClassVar[str] = "layers"
    needs_calibration: ClassVar[bool] = True
    uses_similarity_pass: ClassVar[bool] = False
    higher_is_redundant: ClassVar[bool] = False

    def score(self, ctx: ScoreContext) -> ScoreResult:  # pragma: no cover - interface
        raise NotImplementedError


register_scorer = SCORERS.register


def get_scorer(name: str) -> Scorer:
    return SCORERS.create(name)
