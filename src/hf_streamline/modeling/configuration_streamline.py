"""Configuration of a depth-pruned model whose removed blocks were replaced by small trained modules.

This file is also copied into every saved ``StreamlineForCausalLM`` folder as remote code, so it may import only torch
and transformers (and, with a single-dot relative import, ``modeling_streamline``).
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

REPLACEMENT_RECORD_KEYS = ("slot", "kind", "hidden_size", "intermediate_size")


class StreamlineConfig(PreTrainedConfig):
    r"""Config of [`StreamlineForCausalLM`]: the pruned base model's config nested as ``text_config`` plus one record
    per replacement slot.

    ``text_config`` is the base architecture's config after the replaced blocks were cut down to one slot each, so
    ``text_config.num_hidden_layers`` counts the slots and every per-layer list (``layer_types``, ...) has one entry per
    slot.  ``get_text_config()`` returns it, so ``generate()`` and the KV cache see the right layer count.

    ``replacements``: a list of dicts, each with ``slot`` (index in the decoder list), ``kind`` (``"mlp"``),
    ``hidden_size``, ``intermediate_size``, ``gated`` (SwiGLU-style), ``hidden_act``, ``bias``, ``norm``
    (``"rms"``, ``"rms_offset"`` for Gemma's ``(1 + w)`` scale, or ``"layernorm"``), ``norm_eps``, ``returns``
    (``"tensor"`` or ``"tuple"``: what the base model's loop expects from a decoder layer) and ``replaces`` (the
    original layer indices the module stands in for).

    ``layers_path``: attribute path of the decoder ``ModuleList`` inside the base model (e.g. ``model.layers``).
    """

    model_type = "streamline"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    replacements: list | None = None
    layers_path: str | None = None
    base_model: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # Keep the attention implementation of a given base config (the composite default would reset it to None
        # on the sub-config, which the base model shares).
        if isinstance(self.text_config, PreTrainedConfig) and kwargs.get("attn_implementation") is None:
            impl = getattr(self.text_config, "_attn_implementation", None)
            if impl is not None:
                kwargs["attn_implementation"] = impl
        super().__post_init__(**kwargs)
        self.replacements = [dict(r) for r in (self.replacements or [])]
        n = int(getattr(self.text_config, "num_hidden_layers", 0) or 0)
        seen = set()
        for rec in self.replacements:
            missing = [k for k in REPLACEMENT_RECORD_KEYS if k not in rec]
            if missing:
                raise ValueError(f"StreamlineConfig: replacement record {rec} lacks {missing}")
            slot = int(rec["slot"])
            if not 0 <= slot < n:
                raise ValueError(f"StreamlineConfig: replacement slot {slot} is outside the {n} decoder slots")
            if slot in seen:
                raise ValueError(f"StreamlineConfig: two replacements in slot {slot}")
            seen.add(slot)
        # tying is decided by the base config (the base model ties its own lm_head); mirror it for readers
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    @property
    def replacement_slots(self) -> list[int]:
        return sorted(int(r["slot"]) for r in self.replacements)


__all__ = ["StreamlineConfig"]
