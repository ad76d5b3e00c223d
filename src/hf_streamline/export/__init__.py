"""Exports of pruned models: ONNX (ONNX Runtime; a logits graph, or prefill + decode graphs with a KV cache) and
optimum-quanto int8 / int4 weights.

One format per file, each registered in ``EXPORTERS`` (see ``base.py``); :func:`export_model` runs one, checks the
written export against torch on a fixed input and writes the folder atomically with the plan beside it.
"""

from . import onnx_format, onnx_kv_format, quanto_format  # noqa: F401 - registration
from .api import REPORT_FILENAME, export_model, folder_size, load_exported, load_source
from .base import EXPORTERS, ExportConfig, Exporter, check_inputs, compare_logits, get_exporter, register_exporter
from .onnx_format import ort_logits, ort_session
from .onnx_kv_format import load_onnx_kv, onnx_generate
from .quanto_format import load_quanto

__all__ = ["EXPORTERS", "REPORT_FILENAME", "ExportConfig", "Exporter", "check_inputs", "compare_logits",
           "export_model", "folder_size", "get_exporter", "load_exported", "load_onnx_kv", "load_quanto", "load_source",
           "onnx_generate",
           "ort_logits", "ort_session", "register_exporter"]
