"""``StreamlineForCausalLM``: a base causal LM whose replaced blocks hold small trained modules, one per slot.

The base model is built from ``config.text_config`` with ``AutoModelForCausalLM.from_config``; each replacement module
is put in its slot of the decoder ``ModuleList``.  In the KV cache every replacement slot holds a
``transformers.cache_utils.DummyLayer``: the module stores nothing, and ``get_seq_length()`` / mask sizes are read from
the first real attention layer (a replacement at slot 0 would otherwise break incremental decoding).

This file is also copied into every saved folder as remote code, so it imports only torch, transformers and (with a
single-dot relative import) ``configuration_streamline``: a Python environment without hf_streamline loads the folder
with ``trust_remote_code=True``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DummyLayer, DynamicCache

from .configuration_streamline import StreamlineConfig


class StreamlineNorm(nn.Module):
    """RMSNorm (``rms``: ``x / rms * w``; ``rms_offset``: Gemma's ``x / rms * (1 + w)``) or LayerNorm."""

    def __init__(self, hidden_size: int, kind: str = "rms", eps: float = 1e-6):
        super().__init__()
        if kind not in ("rms", "rms_offset", "layernorm"):
            raise ValueError(f"unknown norm kind {kind!r}; expected rms, rms_offset or layernorm")
        self.kind, self.eps, self.hidden_size = kind, float(eps), int(hidden_size)
        init = torch.zeros if kind == "rms_offset" else torch.ones
        self.weight = nn.Parameter(init(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if kind == "layernorm" else None

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(0.0 if self.kind == "rms_offset" else 1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return nn.functional.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)
        dtype = x.dtype
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float() + (1.0 if self.kind == "rms_offset" else 0.0)
        return (y * w).to(dtype)


class StreamlineMLP(nn.Module):
    """Feed-forward replacement with pre-norm and residual: ``h + down(act(gate(norm(h))) * up(norm(h)))``
    (SwiGLU-style when ``gated``, else ``h + down(act(up(norm(h))))``).

    It accepts and ignores the arguments a decoder layer receives (mask, rotary embeddings, cache, ...), and answers
    ``attention_type`` like the layer whose slot it holds.
    """

    def __init__(self, record: dict, attention_type: str = "full_attention"):
        super().__init__()
        h, i = int(record["hidden_size"]), int(record["intermediate_size"])
        bias = bool(record.get("bias", False))
        self.gated = bool(record.get("gated", True))
        self.returns = record.get("returns", "tensor")
        self.attention_type = attention_type
        self.norm = StreamlineNorm(h, record.get("norm", "rms"), record.get("norm_eps", 1e-6))
        self.gate_proj = nn.Linear(h, i, bias=bias) if self.gated else None
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        self.act_fn = ACT2FN[record.get("hidden_act", "silu")]

    def reset_parameters(self, std: float = 0.02) -> None:
        """Near identity: random input projections, zero output projection (the module starts as plain removal)."""
        self.norm.reset_parameters()
        for lin in (self.gate_proj, self.up_proj):
            if lin is not None:
                nn.init.normal_(lin.weight, std=std)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.down_proj.weight)
        if self.down_proj.bias is not None:
            nn.init.zeros_(self.down_proj.bias)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        x = self.norm(hidden_states)
        inner = self.act_fn(self.gate_proj(x)) * self.up_proj(x) if self.gated else self.act_fn(self.up_proj(x))
        out = hidden_states + self.down_proj(inner)
        return (out,) if self.returns == "tuple" else out


REPLACEMENT_MODULES = {"mlp": StreamlineMLP}


class StreamlineSkippedAttention(nn.Module):
    """Stands in for a removed attention sub-block: adds nothing to the residual stream, computes nothing and stores
    nothing in the KV cache (its slot holds a ``DummyLayer``).  Returns ``(zeros, None)`` like an attention module
    returns ``(output, weights)``."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class StreamlineSkippedMLP(nn.Module):
    """Stands in for a removed MLP sub-block: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states)


SKIPPED_SUBLAYERS = {"attention": StreamlineSkippedAttention, "mlp": StreamlineSkippedMLP}

_KNOWN_LAYER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers",
                      "model.decoder.layers", "transformer.layers", "layers")


def _get_path(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_layers(model: nn.Module, n: int, path: str | None = None) -> nn.ModuleList:
    """The decoder ModuleList of ``model`` (``path`` first, then the usual paths, then any ModuleList of length n)."""
    for p in ([path] if path else []) + list(_KNOWN_LAYER_PATHS):
        try:
            layers = _get_path(model, p)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) == n:
            return layers
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise ValueError(f"cannot find the decoder layers ({n}) of {type(model).__name__}")


class StreamlinePreTrainedModel(PreTrainedModel):
    config_class = StreamlineConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _no_split_modules = ["StreamlineMLP"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        if isinstance(module, (StreamlineMLP,)):
            module.reset_parameters()


class StreamlineForCausalLM(StreamlinePreTrainedModel, GenerationMixin):
    """The base causal LM (``self.model``) with a replacement module in each replacement slot."""

    def __init__(self, config: StreamlineConfig, base_model: nn.Module | None = None):
        super().__init__(config)
        if base_model is None:
            base_model = AutoModelForCausalLM.from_config(config.text_config)
            initialised = False
        else:  # wrap an existing (trained) model: nothing of it may be re-initialised by post_init
            for module in base_model.modules():
                module._is_hf_initialized = True
            initialised = True
        self.model = base_model
        tcfg = config.text_config
        layers = find_layers(self.model, int(tcfg.num_hidden_layers), config.layers_path)
        types = getattr(tcfg, "layer_types", None)
        for rec in config.replacements:
            slot = int(rec["slot"])
            cls = REPLACEMENT_MODULES.get(rec["kind"])
            if cls is None:
                raise ValueError(f"unknown replacement kind {rec['kind']!r}; this code knows {sorted(REPLACEMENT_MODULES)}")
            attention_type = types[slot] if types is not None and slot < len(types) else "full_attention"
            if not isinstance(layers[slot], cls):
                old = layers[slot]
                module = cls(rec, attention_type=attention_type)
                ref = next(old.parameters(), None)
                if ref is not None:
                    module.to(device=ref.device, dtype=ref.dtype)
                if initialised:
                    module.reset_parameters()
                    for sub in module.modules():
                        sub._is_hf_initialized = True
                layers[slot] = module
        for rec in config.removed_sublayers:  # attention / MLP sub-blocks removed from a kept layer
            cls = SKIPPED_SUBLAYERS.get(rec["unit"])
            if cls is None:
                raise ValueError(f"unknown removed sub-block {rec['unit']!r}; this code knows {sorted(SKIPPED_SUBLAYERS)}")
            layer = layers[int(rec["slot"])]
            if not isinstance(getattr(layer, rec["module"], None), cls):
                setattr(layer, rec["module"], cls())
        self._forward_params = set(inspect.signature(self.model.forward).parameters)
        # the name under which the base model's forward takes the KV cache: `cache` from transformers 5.24 on,
        # `past_key_values` before (a feature of the base class, not of a version number)
        self._cache_arg = "cache" if "cache" in self._forward_params else "past_key_values"
        self.post_init()
        if initialised and getattr(base_model, "generation_config", None) is not None:
            self.generation_config = base_model.generation_config

    # --- embeddings: delegate to the base model -------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.model.set_output_embeddings(new_embeddings)

    def get_decoder(self):
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return find_layers(self.model, int(self.config.text_config.num_hidden_layers), self.config.layers_path)

    # --- cache: a DummyLayer in each replacement slot and each attention-free layer ------------------------------------------------------------
    def _mark_replacement_slots(self, cache) -> None:
        layers = getattr(cache, "layers", None)
        if layers is None:
            return
        n = int(self.config.text_config.num_hidden_layers)
        make = getattr(cache, "layer_class_to_replicate", None)
        if make is not None:
            while len(layers) < n:
                layers.append(make())
        for slot in self.config.cache_free_slots:
            if slot < len(layers) and not isinstance(layers[slot], DummyLayer):
                layers[slot] = DummyLayer()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, past_key_values=None, **kwargs):
        # The KV cache arrives as `cache` (transformers >= 5.24: `generate()` passes that name) or `past_key_values`
        # (earlier releases, and callers using the old name); it goes on under the name the base model takes.
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the KV cache as `cache` or as `past_key_values`, not both")
        cache = cache if cache is not None else past_key_values
        if use_cache is None:
            use_cache = bool(getattr(self.config.text_config, "use_cache", True)) and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config.text_config)
        if cache is not None:
            self._mark_replacement_slots(cache)
        call = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache)
        call[self._cache_arg] = cache
        if logits_to_keep or "logits_to_keep" in self._forward_params:
            call["logits_to_keep"] = logits_to_keep
        call = {k: v for k, v in call.items() if v is not None or k in ("input_ids",)}
        call.update(kwargs)
        return self.model(**call)


StreamlineConfig.register_for_auto_class()
StreamlineForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["StreamlineForCausalLM", "StreamlineMLP", "StreamlineNorm", "StreamlinePreTrainedModel",
           "StreamlineSkippedAttention", "StreamlineSkippedMLP"]
