"""``onnx-kv``: ONNX graphs for generation with a KV cache in ONNX Runtime — a ``prefill`` graph and a ``decode`` graph.

Exported with transformers' own ``OnnxExporter.export_for_generation`` (``multi_token_decode=True``: the decode graph
takes one or several new tokens against the cache).  Each graph takes ``input_ids``, ``position_ids`` and the cache
(``cache`` from transformers 5.24 on, ``past_key_values`` before: the forward kwarg the graphs were traced with,
flattened by transformers' pytree registration) and returns logits and the grown cache.  The
graphs are traced on one sequence, so they run batch 1 without an attention mask: one sequence at a time, no padding.
Both graphs hold the weights, so the folder is about twice the ``onnx`` one.

Load with :func:`load_onnx_kv` (a ``transformers.exporters.ExportedModel``) and generate with :func:`onnx_generate`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ..errors import StreamlineError
from .base import ExportConfig, register_exporter
from .onnx_format import OnnxFormat, sample_ids

GRAPHS = ("prefill", "decode")


def load_onnx_kv(folder: str | Path, threads: int | None = None) -> Any:
    """The ``transformers.exporters.ExportedModel`` of an ``onnx-kv`` export, on ONNX Runtime's CPU provider."""
    import onnxruntime as ort
    from transformers.exporters.base import ExportedModel

    folder = Path(folder)
    missing = [g for g in GRAPHS if not (folder / f"{g}.onnx").exists()]
    if missing:
        raise StreamlineError(f"{str(folder)!r} holds no {', '.join(g + '.onnx' for g in missing)}; export it with "
                              "`hf-streamline export --format onnx-kv`")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ExportedModel.from_pretrained(folder, providers=["CPUExecutionProvider"], session_options=options)


def _empty_cache(exported: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=exported.config)


# the KV cache's forward kwarg / output field: `cache` from transformers 5.24 on, `past_key_values` before
_CACHE_NAMES = ("cache", "past_key_values")


def _cache_kwarg(traced_kwargs: Any) -> str:
    """The forward kwarg that holds the KV cache in a graph traced with ``traced_kwargs`` (its metadata's kwargs):
    the graph's inputs are named after it (``input.cache.layers.0.keys`` or ``input.past_key_values.layers.0.keys``),
    so an export runs with the name it was traced with, whichever transformers made it."""
    for name in _CACHE_NAMES:
        if name in traced_kwargs:
            return name
    raise StreamlineError(f"this onnx-kv graph takes no KV cache (its inputs: {sorted(traced_kwargs)}); "
                          "export it again with `hf-streamline export --format onnx-kv`")


def _output_cache(out: Any) -> Any:
    """The grown cache of a step's output (``cache`` from transformers 5.24 on, ``past_key_values`` before)."""
    for name in _CACHE_NAMES:
        value = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if value is not None:
            return value
    got = list(out.keys()) if hasattr(out, "keys") else type(out).__name__
    raise StreamlineError(f"the onnx-kv graph returned no cache (outputs: {got})")


def _step(exported: Any, stage: str, ids: torch.Tensor, start: int, cache: Any) -> Any:
    pos = torch.arange(start, start + ids.shape[1], dtype=torch.long)[None]
    runner = exported.runners[stage]
    return runner(input_ids=ids.to(torch.long), position_ids=pos, **{_cache_kwarg(runner.metadata.kwargs): cache})


@torch.no_grad()
def onnx_generate(exported: Any, input_ids: torch.Tensor, max_new_tokens: int,
                  eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy generation with an ``onnx-kv`` export: the prompt through ``prefill``, then one token at a time through
    ``decode`` with the cache.  ``input_ids``: one sequence, shape (1, T) or (T,).  Returns (1, T + new)."""
    ids = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
    if ids.shape[0] != 1:
        raise StreamlineError(f"onnx-kv exports generate one sequence at a time; got a batch of {ids.shape[0]} "
                              "(loop over the rows)")
    if max_new_tokens < 1:
        return ids
    out = _step(exported, "prefill", ids, 0, _empty_cache(exported))
    new = [out.logits[:, -1].argmax(-1, keepdim=True)]
    n = ids.shape[1]
    while len(new) < max_new_tokens and not (eos_token_id is not None and int(new[-1]) == eos_token_id):
        out = _step(exported, "decode", new[-1], n, _output_cache(out))
        n += 1
        new.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat([ids, *new], dim=1)


@register_exporter
class OnnxKVFormat(OnnxFormat):  # same packages, tolerance and weight files as `onnx`
    name = "onnx-kv"
    description = ("ONNX prefill + decode graphs with a KV cache, for generation in ONNX Runtime "
                   "(transformers.exporters.OnnxExporter.export_for_generation); batch 1")
    backend = "transformers.exporters.OnnxExporter.export_for_generation"

    def export(self, model: Any, output: Path, config: ExportConfig) -> dict[str, Any]:
        from transformers.exporters import OnnxConfig, OnnxExporter

        ids = sample_ids(model, config, batch=1)
        sample = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        generation = copy.deepcopy(model.generation_config)
        generation.update(max_new_tokens=3, min_new_tokens=3, do_sample=False,
                          pad_token_id=generation.pad_token_id if generation.pad_token_id is not None else 0)
        onnx_config = OnnxConfig(dynamic=True, opset_version=config.opset, optimize=config.optimize)
        try:
            with torch.no_grad():
                exported = OnnxExporter().export_for_generation(model, sample, onnx_config, generation_config=generation,
                                                                multi_token_decode=True)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; say which model failed
            raise StreamlineError(f"transformers' ONNX exporter (export_for_generation) failed on "
                                  f"{type(model).__name__}: {type(exc).__name__}: {exc}") from exc
        if set(exported.components) != set(GRAPHS):
            raise StreamlineError(f"export_for_generation gave the graphs {sorted(exported.components)} for "
                                  f"{type(model).__name__}, not {list(GRAPHS)}; use --format onnx for this model")
        cache_name = _cache_kwarg(exported.components["decode"].metadata.kwargs)
        exported.save_pretrained(output)
        import onnxruntime
        import onnxscript

        return {"files": [f"{g}.onnx{ext}" for g in GRAPHS for ext in ("", ".data")], "graphs": list(GRAPHS),
                "inputs": ["input_ids", "position_ids", cache_name], "outputs": ["logits", cache_name],
                "batch": 1, "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__}

    def load(self, folder: Path, config: ExportConfig) -> Any:
        return load_onnx_kv(folder)

    @torch.no_grad()
    def logits(self, loaded: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each row's real tokens on their own: the first half through ``prefill``, the rest one token at a time
        through ``decode`` with the cache, so the check covers both graphs and the cache; padded positions are 0."""
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            keep = mask.bool()
            tokens = ids[keep][None]
            T = tokens.shape[1]
            half = max(1, T // 2)
            out = _step(loaded, "prefill", tokens[:, :half], 0, _empty_cache(loaded))
            pieces, cache = [out.logits.float()], _output_cache(out)
            for t in range(half, T):
                out = _step(loaded, "decode", tokens[:, t:t + 1], t, cache)
                pieces.append(out.logits.float())
                cache = _output_cache(out)
            row = torch.zeros(ids.shape[0], pieces[0].shape[-1])
            row[keep] = torch.cat(pieces, dim=1)[0]
            rows.append(row)
        return torch.stack(rows)
