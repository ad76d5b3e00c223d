"""``quanto-int8`` / ``quanto-int4``: weight-only quantization with optimum-quanto, saved so it reloads.

What works with transformers 5.23 and optimum-quanto 0.2.7: ``optimum.quanto.QuantizedModelForCausalLM`` —
``quantize`` (= ``quantize`` + ``freeze``) then ``save_pretrained`` writes ``model.safetensors`` with the packed
weights plus ``quanto_qmap.json``; ``QuantizedModelForCausalLM.from_pretrained`` rebuilds the model and requantizes.
transformers' own ``QuantoConfig`` only quantizes on load (its quantizer reports ``is_serializable() == False``), and a
plain ``AutoModelForCausalLM.from_pretrained`` of a quanto folder silently leaves the quantized layers randomly
initialised: load these folders with :func:`load_quanto` (or ``QuantizedModelForCausalLM.from_pretrained``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import StreamlineError
from .base import ExportConfig, Exporter, register_exporter

QMAP_FILE = "quanto_qmap.json"


def output_embedding_name(model: Any) -> str | None:
    """Module name of the output projection (``lm_head``, ``embed_out`` ...), found by identity, not by name."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None
    return next((name for name, mod in model.named_modules() if mod is head), None)


def load_quanto(folder: str | Path) -> Any:
    """Load a quanto export as the plain transformers model it wraps (quantized ``QLinear`` layers, eval mode)."""
    from optimum.quanto import QuantizedModelForCausalLM

    from .. import modeling  # noqa: F401 - registers the "streamline" model type for replaced models

    folder = Path(folder)
    if not (folder / QMAP_FILE).exists():
        raise StreamlineError(f"{str(folder)!r} holds no {QMAP_FILE}; it is not a quanto export")
    wrapped = QuantizedModelForCausalLM.from_pretrained(str(folder))
    model = wrapped._wrapped
    model.eval()
    return model


class QuantoFormat(Exporter):
    backend = "optimum.quanto.QuantizedModelForCausalLM"
    extra = "quant"
    required_modules = ("optimum.quanto",)
    weight_patterns = ("*.safetensors",)
    weights: ClassVar[str]

    def export(self, model: Any, output: Path, config: ExportConfig) -> dict[str, Any]:
        import optimum.quanto
        from optimum.quanto import QuantizedModelForCausalLM, quantization_map

        head = output_embedding_name(model)
        exclude = [head] if head and not config.quantize_lm_head else None
        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in (exclude or [])]
        if not linear:
            raise StreamlineError(f"{type(model).__name__} has no torch.nn.Linear layers for optimum-quanto to quantize "
                                  "(GPT-2 style models use Conv1D); use --format onnx for this model")
        try:
            qmodel = QuantizedModelForCausalLM.quantize(model, weights=self.weights, exclude=exclude)  # in place
        except Exception as exc:  # noqa: BLE001 - name the model that failed
            raise StreamlineError(f"optimum-quanto could not quantize {type(model).__name__} to {self.weights}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        qmodel.save_pretrained(output)
        (output / "README.md").unlink(missing_ok=True)  # huggingface_hub's generic card, not about this model
        qmap = quantization_map(model)
        return {"files": ["model.safetensors", QMAP_FILE], "weights": self.weights, "excluded": exclude or [],
                "quantized_modules": len(qmap), "optimum_quanto": getattr(optimum.quanto, "__version__", "unknown")}

    def load(self, folder: Path, config: ExportConfig) -> Any:
        return load_quanto(folder)

    def logits(self, loaded: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(input_ids=input_ids, attention_mask=attention_mask).logits.float()


@register_exporter
class QuantoInt8(QuantoFormat):
    name = "quanto-int8"
    description = "int8 weights (per output channel), float activations, optimum-quanto"
    weights = "qint8"


@register_exporter
class QuantoInt4(QuantoFormat):
    name = "quanto-int4"
    description = "int4 weights (groups of up to 128 inputs, scale + shift), float activations, optimum-quanto"
    weights = "qint4"
