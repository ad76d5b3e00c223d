"""``hf-streamline export``: every option, its default and its help (the one declaration; hf_streamline.arguments).

The defaults repeat ``hf_streamline.export.ExportConfig``'s: that package imports torch, so they are literals here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import option
from .common import CommandArguments, OutputArguments


def _formats() -> list[str]:
    from ..plugins import EXPORTERS  # the names only: no exporter module is imported

    return sorted(EXPORTERS)


def description() -> str:
    """The command's description (``export --help``): every format with its exporter's description, read from the
    exporters' class bodies without importing them (torch)."""
    from ..plugins import EXPORTERS

    formats = "; ".join(f"{n}: {EXPORTERS.declared(n, 'description')}" for n in sorted(EXPORTERS))
    return f"Formats — {formats}."


@dataclass
class ExportArguments(OutputArguments, CommandArguments):
    """Export a model folder to ONNX or quantize it with optimum-quanto, checked against torch."""

    command: ClassVar[str] = "export"
    parser_description = staticmethod(description)  # the command's --help description (a class attribute, no field)

    model_dir: str | None = option(positional=True, metavar="DIR",
                                   help="the model folder (e.g. written by `hf-streamline prune`)")
    format: str | None = option(required=True, choices=_formats, help="export format")
    check_seq_len: int = option(32, help="tokens per row of the fixed check input (default 32)")
    tolerance: float | None = option(help="fail when max |Δ logits| vs torch exceeds this x max(1, max |logit|) "
                                          "(default: onnx 1e-4; quanto: report only)")
    no_verify: bool = option(False, help="skip loading the export back and comparing with torch")
    opset: int | None = option(help="onnx: opset version (default: onnxscript's latest)")
    no_optimize: bool = option(False, help="onnx: skip the onnxscript graph optimizer")
    quantize_lm_head: bool = option(False, help="quanto: also quantize the output projection (unties tied embeddings: "
                                                "larger on disk)")
    trust_remote_code: bool = option(False, help="allow custom modeling code from the model folder")
