"""``onnx``: one ONNX graph (input_ids, attention_mask -> logits; dynamic batch and length) for ONNX Runtime.

Exported with transformers' own exporter (``transformers.exporters.OnnxExporter``: ``torch.export`` + ``torch.onnx``
with transformers' patches).  optimum's ONNX exporter lives in ``optimum-onnx``, which pins transformers < 4.58 and
cannot be installed beside transformers 5.  The graph is a prefill/scoring graph without a KV cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import StreamlineError
from .base import ExportConfig, Exporter, register_exporter

ONNX_FILE = "model.onnx"


def ort_session(folder: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session on ``folder/model.onnx`` (weights read from ``model.onnx.data`` beside it)."""
    import onnxruntime as ort

    path = Path(folder) / ONNX_FILE
    if not path.exists():
        raise StreamlineError(f"{str(folder)!r} holds no {ONNX_FILE}; export it with `hf-streamline export --format onnx`")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(session: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    feeds = {"input_ids": input_ids.to(torch.int64).numpy(), "attention_mask": attention_mask.to(torch.int64).numpy()}
    names = {i.name for i in session.get_inputs()}
    (logits,) = session.run(["logits"], {k: v for k, v in feeds.items() if k in names})
    return torch.from_numpy(logits).float()


def sample_ids(model: Any, config: ExportConfig, batch: int, length: int = 16) -> torch.Tensor:
    """Seeded random token ids to trace an export with (ids >= 3 where the vocabulary allows: no special tokens)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(config.seed + 1)
    return torch.randint(min(3, vocab - 1), vocab, (batch, length), generator=gen)


@register_exporter
class OnnxFormat(Exporter):
    name = "onnx"
    description = "ONNX graph for ONNX Runtime (transformers.exporters.OnnxExporter), logits only, no KV cache"
    backend = "transformers.exporters.OnnxExporter"
    extra = "onnx"
    required_modules = ("onnx", "onnxruntime", "onnxscript")
    default_tolerance = 1e-4
    weight_patterns = ("*.onnx", "*.onnx.data")

    def export(self, model: Any, output: Path, config: ExportConfig) -> dict[str, Any]:
        from torch.export import Dim
        from transformers.exporters import OnnxConfig, OnnxExporter

        ids = sample_ids(model, config, batch=2)
        sample = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
        batch, seq = Dim("batch"), Dim("sequence_length")
        # only the axes that vary are dynamic: faster than dynamic=True alone (every axis Dim.AUTO)
        dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
        onnx_config = OnnxConfig(dynamic=True, dynamic_shapes=dynamic, opset_version=config.opset,
                                 optimize=config.optimize)
        try:
            with torch.no_grad():
                exported = OnnxExporter().export(model, sample, onnx_config)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; say which model failed
            raise StreamlineError(f"transformers' ONNX exporter failed on {type(model).__name__}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        exported.save_pretrained(output)
        import onnxruntime
        import onnxscript

        opset = next((i.version for i in _onnx_opsets(output / ONNX_FILE) if i.domain in ("", "ai.onnx")), None)
        return {"files": [ONNX_FILE, ONNX_FILE + ".data"], "opset": opset, "inputs": ["input_ids", "attention_mask"],
                "outputs": ["logits"], "dynamic_axes": ["batch", "sequence_length"],
                "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__}

    def load(self, folder: Path, config: ExportConfig) -> Any:
        return ort_session(folder)

    def logits(self, loaded: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return ort_logits(loaded, input_ids, attention_mask)


def _onnx_opsets(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False).opset_import
