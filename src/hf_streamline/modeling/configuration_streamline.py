"""Configuration of a depth-pruned model whose removed blocks were replaced by small trained modules.

This file is also copied into every saved ``StreamlineForCausalLM`` folder as remote code, so it may import only torch
and transformers (and, with a single-dot relative import, ``modeling_streamline``).
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

REPLACEMENT_RECORD_KEYS = ("slot", "kind", "hidden_size", "intermediate_size")
SUBLAYER_RECORD_KEYS = ("slot", "unit", "module")


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

    ``removed_sublayers``: a list of dicts ``{"slot", "unit", "module"}``: in decoder slot ``slot`` the sub-block
    ``unit`` (``"attention"`` or ``"mlp"``), the layer's attribute ``module`` (e.g. ``self_attn``), was removed; it adds
    nothing, computes nothing, and an attention-free slot holds no KV cache.  ``replaces`` optionally names the original
    layer index.

    ``layers_path``: attribute path of the decoder ``ModuleList`` inside the base model (e.g. ``model.layers``).
    """

    model_type = "streamline"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    replacements: list | None = None
    removed_sublayers: list | None = None
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
        self.removed_sublayers = [dict(r) for r in (self.removed_sublayers or [])]
        pairs = set()
        for rec in self.removed_sublayers:
            missing = [k for k in SUBLAYER_RECORD_KEYS if k not in rec]
            if missing:
                raise ValueError(f"StreamlineConfig: removed sub-block record {rec} lacks {missing}")
            slot, unit = int(rec["slot"]), rec["unit"]
            if unit not in ("attention", "mlp"):
                raise ValueError(f"StreamlineConfig: removed sub-block {unit!r} is neither 'attention' nor 'mlp'")
            if not 0 <= slot < n or slot in seen:
                raise ValueError(f"StreamlineConfig: removed sub-block in slot {slot}, which is not a kept decoder "
                                 f"layer (slots 0..{n - 1}, replacements {sorted(seen)})")
            if (slot, unit) in pairs:
                raise ValueError(f"StreamlineConfig: the {unit} of slot {slot} is removed twice")
            pairs.add((slot, unit))
        # tying is decided by the base config (the base model ties its own lm_head); mirror it for readers
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    @property
    def replacement_slots(self) -> list[int]:
        return sorted(int(r["slot"]) for r in self.replacements)

    @property
    def attention_free_slots(self) -> list[int]:
        """Kept layers whose attention sub-block was removed."""
        return sorted(int(r["slot"]) for r in self.removed_sublayers if r["unit"] == "attention")

    @property
    def cache_free_slots(self) -> list[int]:
        """Decoder slots that hold no KV cache (a ``DummyLayer``): replacements and attention-free layers."""
        return sorted(set(self.replacement_slots) | set(self.attention_free_slots))


__all__ = ["StreamlineConfig"]
