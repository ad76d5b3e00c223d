"""``export_model``: a pruned checkpoint folder -> an ONNX or quantized folder, checked against torch, written atomically."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import StreamlineError
from ..plan import PLAN_FILENAME
from ..utils import atomic_output_dir, check_output_dir, versions
from .base import ExportConfig, check_inputs, compare_logits, get_exporter

REPORT_FILENAME = "export_report.json"
# files of the source folder that are not copied: its weights (the export has its own) and what exporters write
_SKIP = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.gguf",
         "*.onnx", "*.onnx.data", "config.json", "generation_config.json", "README.md", REPORT_FILENAME)


def folder_size(folder: str | Path, patterns: tuple[str, ...] = ("*",)) -> int:
    """Bytes of the files in ``folder`` (recursive) whose name matches one of ``patterns``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*")
               if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns))


def load_source(folder: Path, trust_remote_code: bool = False) -> Any:
    """The torch model of a checkpoint folder, in float32 and eval mode (no tokenizer needed)."""
    from transformers import AutoConfig

    from ..architecture import check_causal_lm

    from ..loading import _from_pretrained_checked, check_safetensors_file

    if (Path(folder) / "model.safetensors").is_file():
        check_safetensors_file(Path(folder) / "model.safetensors", "DIR")
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    # weights that do not match the config are an error, never exported as random layers
    model = _from_pretrained_checked(str(folder), config, {"dtype": torch.float32, "trust_remote_code": trust_remote_code},
                                     "DIR")
    model.eval()
    check_causal_lm(model)
    return model


def _check_source(source: str | os.PathLike) -> Path:
    src = Path(source)
    if not src.is_dir():
        raise StreamlineError(f"model folder {str(src)!r} does not exist; give the folder written by "
                              "`hf-streamline prune` (or any save_pretrained folder)")
    if not (src / "config.json").exists():
        raise StreamlineError(f"{str(src)!r} holds no config.json; give a save_pretrained model folder")
    if (src / REPORT_FILENAME).exists():
        raise StreamlineError(f"{str(src)!r} is already an export; give the torch checkpoint it came from")
    return src


def export_model(source: str | os.PathLike, output: str | os.PathLike, format: str,
                 config: ExportConfig | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Export the checkpoint folder ``source`` to ``format`` in ``output``; return the report (also saved there).

    The export is loaded back from disk and compared with the torch model on a fixed input (see
    :func:`~hf_streamline.export.base.check_inputs`); a max |Δ logits| above ``tolerance x max(1, max |logit|)`` fails,
    leaving no output (fp32 rounding noise grows with the logit scale: on SmolLM2, whose logits reach 33, torch's own
    logits of one row move by 9e-5 between batch sizes 1 and 2).
    ``streamline_plan.json``, the tokenizer files and any other non-weight file of ``source`` are copied beside it.
    """
    config = config or ExportConfig()
    exporter = get_exporter(format)
    exporter.check_environment()
    src = _check_source(source)
    check_output_dir(output, overwrite)  # refuse before any long work
    tolerance = config.tolerance if config.tolerance is not None else exporter.default_tolerance

    model = load_source(src, config.trust_remote_code)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids, mask = check_inputs(vocab, config)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits.float()

    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        start = time.perf_counter()
        details = exporter.export(model, tmp, config)  # may change ``model`` in place (quantization)
        seconds = time.perf_counter() - start
        del model
        for item in sorted(src.iterdir()):
            if not any(fnmatch.fnmatch(item.name, pat) for pat in _SKIP) and not (tmp / item.name).exists():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        check: dict[str, Any] = {}
        if config.verify:
            loaded = exporter.load(tmp, config)
            check = compare_logits(reference, exporter.logits(loaded, ids, mask), mask)
            del loaded
            # fp32 rounding grows with the logit scale: the bound is tolerance x max(1, max |logit|)
            bound = None if tolerance is None else tolerance * max(1.0, check["logit_max_abs"])
            check.update(input=f"{config.check_batch}x{config.check_seq_len} random token ids (seed {config.seed}), "
                               "first row left-padded by 3", tolerance=tolerance, bound=bound,
                         within_tolerance=None if bound is None else check["max_abs_diff"] <= bound)
            if check["within_tolerance"] is False:
                raise StreamlineError(
                    f"the {format} export differs from torch by {check['max_abs_diff']:.3g} (> {bound:.3g} = tolerance "
                    f"{tolerance:g} x max(1, max |logit| {check['logit_max_abs']:.3g})) on the check input; nothing "
                    "was written. Raise --tolerance or report the model")
        weights = folder_size(tmp, exporter.weight_patterns)
        report = {"format": format, "backend": exporter.backend, "source": str(src.absolute()),
                  "plan": PLAN_FILENAME if (tmp / PLAN_FILENAME).exists() else None,
                  "size_bytes": folder_size(tmp), "weights_bytes": weights,
                  "source_weights_bytes": folder_size(src, ("*.safetensors", "*.bin")),
                  "export_seconds": round(seconds, 2), "check": check, "details": details,
                  "config": config.to_dict(), "versions": versions()}
        report["size_ratio"] = (weights / report["source_weights_bytes"]) if report["source_weights_bytes"] else None
        (tmp / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def load_exported(folder: str | os.PathLike) -> tuple[Any, Any]:
    """Load an export written by :func:`export_model`: ``(exporter, loaded)``; ``exporter.logits(loaded, ids, mask)``
    runs it (an ONNX Runtime session for ``onnx``, the quantized transformers model for ``quanto-*``)."""
    folder = Path(folder)
    report_file = folder / REPORT_FILENAME
    if not report_file.exists():
        raise StreamlineError(f"{str(folder)!r} holds no {REPORT_FILENAME}; it was not written by hf-streamline export")
    fmt = json.loads(report_file.read_text(encoding="utf-8"))["format"]
    exporter = get_exporter(fmt)
    return exporter, exporter.load(folder, ExportConfig())
