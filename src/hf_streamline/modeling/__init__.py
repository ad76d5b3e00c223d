"""``StreamlineConfig`` / ``StreamlineForCausalLM``: models whose removed blocks hold trained replacement modules.

Importing this package registers both with ``AutoConfig`` and ``AutoModelForCausalLM`` (model type ``"streamline"``),
so ``AutoModelForCausalLM.from_pretrained(folder)`` works without ``trust_remote_code`` wherever hf_streamline is
imported.  Saved folders also carry the two modules below as remote code (``auto_map``), for environments without it.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_streamline import StreamlineConfig
from .modeling_streamline import REPLACEMENT_MODULES, StreamlineForCausalLM, StreamlineMLP, StreamlineNorm

REMOTE_CODE_FILES = ("configuration_streamline.py", "modeling_streamline.py")


def _register() -> None:
    try:
        AutoConfig.register(StreamlineConfig.model_type, StreamlineConfig, exist_ok=True)
    except TypeError:  # older signatures without exist_ok
        AutoConfig.register(StreamlineConfig.model_type, StreamlineConfig)
    try:
        AutoModelForCausalLM.register(StreamlineConfig, StreamlineForCausalLM, exist_ok=True)
    except TypeError:
        AutoModelForCausalLM.register(StreamlineConfig, StreamlineForCausalLM)


_register()

__all__ = ["REMOTE_CODE_FILES", "REPLACEMENT_MODULES", "StreamlineConfig", "StreamlineForCausalLM", "StreamlineMLP",
           "StreamlineNorm"]
