"""Every built-in plug-in, one table per kind: name → the module that defines it (and registers it on import).

Reading a name here costs nothing -- the modules, which import torch, transformers or peft, load when a plug-in is
first used -- so the command line takes its choices and recipe validation its allowed values from these tables
without loading any of them (``hf-streamline run RECIPE --validate-only``; tests/test_cli_startup.py).  A new plug-in
is one file whose class carries ``name`` and the table's ``register`` decorator, plus its line here; a test checks that
every line names the module whose class registers that name.  Extensions register their own classes at import and
need no line here.
"""

from __future__ import annotations

from .registry import Registry

SCORERS = Registry("metric", {
    "angular": "hf_streamline.scores.angular",
    "block_cosine": "hf_streamline.scores.block_cosine",
    "block_influence": "hf_streamline.scores.block_influence",
    "magnitude": "hf_streamline.scores.magnitude",
    "perplexity": "hf_streamline.scores.perplexity",
    "random": "hf_streamline.scores.random_order",
    "reverse_order": "hf_streamline.scores.reverse_order",
    "taylor": "hf_streamline.scores.taylor",
})
MERGE_RULES = Registry("merge rule", {
    "average": "hf_streamline.merging.average",
    "drop": "hf_streamline.merging.drop",
    "rdsc": "hf_streamline.merging.rdsc",
    "top_weights": "hf_streamline.merging.top_weights",
})
OUTPUT_SIMILARITIES = Registry("--similarity", {
    "output_cosine": "hf_streamline.merging.similarity",
    "token_cosine": "hf_streamline.merging.similarity",
    "logits_kl": "hf_streamline.merging.similarity",
    "cka": "hf_streamline.merging.similarity",
})
HEALING_METHODS = Registry("healing method", {
    "lora": "hf_streamline.healing.lora",
    "partial": "hf_streamline.healing.partial",
    "distill": "hf_streamline.healing.distill",
    "qlora": "hf_streamline.healing.qlora",
})
EXPORTERS = Registry("export format", {
    "onnx": "hf_streamline.export.onnx_format",
    "onnx-kv": "hf_streamline.export.onnx_kv_format",
    "quanto-int8": "hf_streamline.export.quanto_format",
    "quanto-int4": "hf_streamline.export.quanto_format",
})
KINDS = Registry("replacement kind", {
    "decoder_layer": "hf_streamline.replacement.decoder_layer",
    "linear": "hf_streamline.replacement.linear",
    "mlp": "hf_streamline.replacement.mlp",
    "none": "hf_streamline.replacement.none",
})
OBJECTIVES = Registry("training objective", {
    "lm": "hf_streamline.training.objectives.lm",
    "mse": "hf_streamline.training.objectives.mse",
})

REGISTRIES = (SCORERS, MERGE_RULES, OUTPUT_SIMILARITIES, HEALING_METHODS, EXPORTERS, KINDS, OBJECTIVES)
