"""Architecture knowledge as data.

Everything the library needs to know about a decoder-only architecture in order to find, skip, remove or
re-index its decoder layers lives in the tables below.  Code elsewhere reads these tables; there are no
``if model_type == ...`` chains.  A new architecture that follows the usual transformers layout needs no entry
at all: the decoder list is found generically (the ``nn.ModuleList`` whose length is ``num_hidden_layers``).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .errors import StreamlineError

# Attribute paths (from the *CausalLM wrapper) where known families keep their decoder ModuleList.
DECODER_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma 1/2/3 (text), Phi3, Mixtral, Qwen-MoE, SmolLM
    "model.language_model.layers",  # multimodal wrappers (Gemma3ForConditionalGeneration, ...)
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.layers",
    "layers",
)

# Attribute paths of the final norm before the LM head.
FINAL_NORM_PATHS: tuple[str, ...] = (
    "model.norm",
    "model.language_model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "transformer.norm",
    "norm",
)

# Config keys that hold one entry per decoder layer: sliced on removal.
PER_LAYER_LIST_KEYS: tuple[str, ...] = (
    "layer_types",
    "mlp_layer_types",
    "no_rope_layers",
    "attention_layers",
    "block_types",
    "attn_layer_types",
    "sliding_window_layers",
    "rope_layers",
    "moe_layer_types",
)

# Config keys that hold a list of *layer indices*: remapped (indices of removed layers are dropped).
INDEX_LIST_KEYS: tuple[str, ...] = (
    "mlp_only_layers",
    "moe_layers",
    "full_attn_idxs",
    "global_attn_layers",
    "attn_layer_indices",
    "dense_layers",
)

# Config keys that hold a threshold index: "layers below k are special".  After removal the new threshold is the
# number of kept layers that were below it (the kept layers below the threshold still form a prefix).
INDEX_THRESHOLD_KEYS: tuple[str, ...] = (
    "max_window_layers",
    "first_k_dense_replace",
)

# Config keys naming the number of decoder layers (``num_hidden_layers`` is set through ``attribute_map`` where a
# model names it otherwise, e.g. GPT-2's ``n_layer``).
NUM_LAYERS_KEYS: tuple[str, ...] = ("num_hidden_layers",)

# Module attributes inside a decoder layer that carry its index; renumbered on every kept layer.
LAYER_INDEX_ATTRIBUTES: tuple[str, ...] = ("layer_idx", "layer_id", "layer_index")

# The MLP of a decoder layer and the projections that write its output (what a linear map on the MLP's output is
# folded into, ReplaceMe-style).  A layer without an MLP sub-module keeps the projections on itself (OPT: fc1/fc2).
MLP_MODULE_NAMES: tuple[str, ...] = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
MLP_OUTPUT_PROJECTION_NAMES: tuple[str, ...] = (
    "down_proj",  # Llama, Mistral, Qwen, Gemma, Phi3, and the experts of Mixtral / Qwen-MoE / DeepSeek
    "w2",  # older Mixtral experts, Mamba-style MLPs
    "c_proj",  # GPT-2 (a Conv1D), GPT-J
    "dense_4h_to_h",  # GPT-NeoX, Falcon, Bloom
    "fc2",  # OPT, Phi-1/2, BioGPT
)
# Sub-modules of a mixture-of-experts MLP: the routed experts (a ModuleList of MLPs, or one module holding fused 3-D
# expert weights) and any always-on shared expert (Qwen-MoE's is scaled by a sigmoid gate: a scalar, so a fold into
# its output projection stays exact).
MOE_EXPERTS_NAMES: tuple[str, ...] = ("experts",)
MOE_SHARED_EXPERT_NAMES: tuple[str, ...] = ("shared_expert", "shared_experts", "shared_mlp")
# Weight layouts.  nn.Linear stores (out, in); these store (in, out) and compute ``x @ W``.
TRANSPOSED_LINEAR_CLASSES: tuple[str, ...] = ("Conv1D",)  # GPT-2
# Fused expert weights are (experts, out, in) used as F.linear unless the module says ``is_transposed`` (set by
# transformers' ``use_experts_implementation``) or its class is listed here ((experts, in, out), used with bmm).
TRANSPOSED_EXPERT_CLASSES: tuple[str, ...] = ("Llama4TextExperts",)
# A norm between the MLP and the residual add (Gemma 2/3): a linear map after it cannot be folded into the weights.
POST_MLP_NORM_NAMES: tuple[str, ...] = ("post_feedforward_layernorm", "post_mlp_layernorm", "post_ffw_norm")

# Sub-blocks (attention / MLP as separately removable units).  The attention sub-module of a decoder layer, and the
# projection that writes its output into the residual stream (zeroed by ``--export zeroed``).
ATTENTION_MODULE_NAMES: tuple[str, ...] = ("self_attn", "attn", "attention", "self_attention")
ATTENTION_OUTPUT_PROJECTION_NAMES: tuple[str, ...] = ("o_proj", "c_proj", "dense", "out_proj", "wo")
# The norm whose *input* is the residual stream between the attention and the MLP sub-block (its input is what the
# attention sub-block wrote; LLM-Drop's scores read it).  Gemma 2/3's pre_feedforward_layernorm first: their
# post_attention_layernorm normalises the attention output itself.
PRE_MLP_NORM_NAMES: tuple[str, ...] = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2",
                                       "final_layer_norm")
# Layers whose attention and MLP both read the same input (parallel residual): their sub-blocks are not separate
# residual steps, so they cannot be removed one by one.  Config flags that say so, and model types that always are.
PARALLEL_RESIDUAL_FLAGS: tuple[str, ...] = ("use_parallel_residual", "parallel_attn", "parallel_residual")
PARALLEL_RESIDUAL_MODEL_TYPES: tuple[str, ...] = ("phi", "gptj", "cohere", "cohere2", "codegen", "falcon")


@dataclass(frozen=True)
class ConfigRule:
    """A config setting that makes layer removal change the model unless converted (or refused)."""

    name: str
    applies: Callable[[Any], bool]
    message: str
    convert: Callable[[Any, list[int]], None] | None = None  # (config, kept_old_indices) -> None, edits in place


def _convert_sparse_step(config: Any, kept: list[int]) -> None:
    """Qwen-MoE: layer i is sparse iff i not in mlp_only_layers and (i+1) % decoder_sparse_step == 0.

    After removal the index rule no longer describes the kept layers, so make it explicit: step 1 (every layer
    sparse) plus ``mlp_only_layers`` listing every kept layer that was dense (old indices here; the generic index-list
    remapping that follows turns them into new ones).
    """
    step = int(config.decoder_sparse_step)
    only = set(getattr(config, "mlp_only_layers", None) or [])
    experts = int(getattr(config, "num_experts", 0) or 0)
    dense = [i for i in kept if not (i not in only and experts > 0 and (i + 1) % step == 0)]
    config.decoder_sparse_step = 1
    config.mlp_only_layers = dense


CONFIG_RULES: tuple[ConfigRule, ...] = (
    ConfigRule(
        name="scale_attn_by_inverse_layer_idx",
        applies=lambda c: bool(getattr(c, "scale_attn_by_inverse_layer_idx", False)),
        message=(
            "this model scales attention by 1/(layer_idx+1) (`scale_attn_by_inverse_layer_idx=True`), so a kept layer "
            "would compute something else at its new index and a reloaded checkpoint would differ from the pruned model. "
            "There is no plain-checkpoint equivalent; prune a model without this option."
        ),
    ),
    ConfigRule(
        name="decoder_sparse_step",
        applies=lambda c: int(getattr(c, "decoder_sparse_step", 1) or 1) != 1,
        message="the sparse/dense pattern is computed from the layer index (`decoder_sparse_step`)",
        convert=_convert_sparse_step,
    ),
)

# Encoder (bidirectional) architectures that transformers also maps to AutoModelForCausalLM as "decoders": they are
# causal only when configured with ``is_decoder=True``; otherwise they are masked-LM encoders and are refused.
ENCODER_MODEL_TYPES: frozenset[str] = frozenset({
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "electra", "camembert", "ernie", "data2vec-text", "rembert",
    "roc_bert", "megatron-bert", "bert-generation", "big_bird", "xmod", "modernbert", "distilbert", "deberta",
    "deberta-v2", "albert", "mpnet", "esm",
})

ENCODER_ONLY_HINT = (
    "hf_streamline prunes decoder-only causal language models (loaded with AutoModelForCausalLM); "
    "encoder-only models such as BERT have no causal LM head and no decoder layer stack to shorten."
)


def get_attr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set_attr_path(obj: Any, path: str, value: Any) -> None:
    parent, _, last = path.rpartition(".")
    if parent:
        obj = get_attr_path(obj, parent)
    setattr(obj, last, value)


def text_config(model_or_config: Any) -> Any:
    config = getattr(model_or_config, "config", model_or_config)
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def num_layers(model: nn.Module) -> int:
    return len(get_decoder_layers(model))


def find_decoder_layers_path(model: nn.Module) -> str:
    """Return the attribute path of the decoder-layer ModuleList of ``model``.

    Known paths are tried first; otherwise the ModuleList whose length equals the config's layer count is used.
    """
    cfg = text_config(model)
    expected = getattr(cfg, "num_hidden_layers", None)
    if getattr(cfg, "is_encoder_decoder", False):
        raise StreamlineError(f"{type(model).__name__} is an encoder-decoder model. {ENCODER_ONLY_HINT}")
    for path in DECODER_LAYER_PATHS:
        try:
            layers = get_attr_path(model, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and (expected is None or len(layers) == expected):
            return path
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (expected is None or len(mod) == expected)
    ]
    if candidates:
        return max(candidates, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))[0]
    raise StreamlineError(
        f"Could not find the decoder layers of {type(model).__name__} (model_type={getattr(cfg, 'model_type', '?')!r}). "
        f"{ENCODER_ONLY_HINT} If this is a decoder-only model with an unusual layout, add its attribute path to "
        "hf_streamline.architecture.DECODER_LAYER_PATHS."
    )


def get_decoder_layers(model: nn.Module) -> nn.ModuleList:
    return get_attr_path(model, find_decoder_layers_path(model))


def set_decoder_layers(model: nn.Module, layers: nn.ModuleList, path: str | None = None) -> None:
    _set_attr_path(model, path or find_decoder_layers_path(model), layers)


def get_final_norm(model: nn.Module) -> nn.Module | None:
    for path in FINAL_NORM_PATHS:
        try:
            return get_attr_path(model, path)
        except AttributeError:
            continue
    return None


def check_causal_lm(model: nn.Module) -> None:
    """Refuse models that are not decoder-only causal LMs, with a message that says why."""
    cfg = text_config(model)
    if getattr(cfg, "is_encoder_decoder", False) or not hasattr(model, "get_output_embeddings"):
        raise StreamlineError(f"{type(model).__name__} is not a decoder-only causal LM. {ENCODER_ONLY_HINT}")
    check_causal_config(cfg)
    find_decoder_layers_path(model)


def check_causal_config(config: Any) -> None:
    """Refuse, from the config alone (before loading weights), models that are not decoder-only causal LMs."""
    cfg = text_config(config)
    model_type = getattr(cfg, "model_type", None)
    if getattr(cfg, "is_encoder_decoder", False):
        raise StreamlineError(f"{model_type!r} is an encoder-decoder model. {ENCODER_ONLY_HINT}")
    if model_type in ENCODER_MODEL_TYPES and not getattr(cfg, "is_decoder", False):
        raise StreamlineError(f"{model_type!r} is an encoder-only model. {ENCODER_ONLY_HINT}")


def layer_parameter_counts(model: nn.Module) -> list[int]:
    return [sum(p.numel() for p in layer.parameters()) for layer in get_decoder_layers(model)]


def renumber_layer(layer: nn.Module, new_idx: int) -> None:
    """Set every layer-index attribute inside ``layer`` (the layer itself, its attention, ...) to ``new_idx``."""
    for module in layer.modules():
        for attr in LAYER_INDEX_ATTRIBUTES:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(module, attr, new_idx)


def _replace_config_everywhere(model: nn.Module, old: Any, new: Any) -> None:
    for module in model.modules():
        if getattr(module, "config", None) is old:
            module.config = new
        # Multimodal wrappers hold the text config as a sub-config of the top config.
    if getattr(model, "config", None) is new:
        return
    model.config = new


def pruned_config(config: Any, kept: list[int], *, strict: bool = True) -> Any:
    """Return a deep copy of ``config`` describing only the ``kept`` layers (old indices, ascending).

    Slices per-layer lists, remaps index lists and thresholds, applies conversion rules, and refuses settings that
    cannot stay correct.
    """
    new = copy.deepcopy(config)
    tcfg = text_config(new)
    old_n = int(tcfg.num_hidden_layers)
    if any(i < 0 or i >= old_n for i in kept):
        raise StreamlineError(f"kept layer indices {kept} out of range for a model with {old_n} layers")
    removing = len(kept) != old_n or list(kept) != list(range(old_n))
    for rule in CONFIG_RULES:
        if removing and rule.applies(tcfg):
            if rule.convert is None:
                raise StreamlineError(f"Cannot remove layers from this model: {rule.message}")
            rule.convert(tcfg, list(kept))
            warnings.warn(f"converted `{rule.name}`: {rule.message}; made explicit per layer", stacklevel=2)
    for key in PER_LAYER_LIST_KEYS:
        value = getattr(tcfg, key, None)
        if isinstance(value, (list, tuple)):
            if len(value) != old_n:
                if strict:
                    raise StreamlineError(
                        f"config.{key} has {len(value)} entries but the model has {old_n} layers; cannot slice it"
                    )
                continue
            setattr(tcfg, key, type(value)(value[i] for i in kept))
    old_to_new = {old: new_i for new_i, old in enumerate(kept)}
    for key in INDEX_LIST_KEYS:
        value = getattr(tcfg, key, None)
        if isinstance(value, (list, tuple)):
            setattr(tcfg, key, type(value)(old_to_new[i] for i in value if i in old_to_new))
    for key in INDEX_THRESHOLD_KEYS:
        value = getattr(tcfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(tcfg, key, sum(1 for i in kept if i < value))
    # Any other list with one entry per layer is suspicious: it may be per-layer data we do not know about.
    for key, value in list(vars(tcfg).items()):
        if key in PER_LAYER_LIST_KEYS or key in INDEX_LIST_KEYS:
            continue
        if isinstance(value, (list, tuple)) and len(value) == old_n and old_n > 2 and removing:
            warnings.warn(
                f"config.{key} has one entry per layer ({old_n}) but is not a known per-layer key; it was left as is. "
                "If it is per-layer data, add it to hf_streamline.architecture.PER_LAYER_LIST_KEYS.",
                stacklevel=2,
            )
    for key in NUM_LAYERS_KEYS:
        setattr(tcfg, key, len(kept))
    return new


def keep_only_layers(model: nn.Module, kept: list[int]) -> nn.Module:
    """Shorten ``model`` in place to the decoder layers ``kept`` (old indices, ascending).

    The config is deep-copied first (models may share the config object), every per-layer entry is sliced and every
    kept layer is renumbered, so that the result is a plain checkpoint of the base architecture.
    """
    kept = sorted(int(i) for i in kept)
    if len(set(kept)) != len(kept):
        raise StreamlineError(f"duplicate layer indices in {kept}")
    path = find_decoder_layers_path(model)
    layers = get_attr_path(model, path)
    if not kept:
        raise StreamlineError("cannot remove every decoder layer: at least one must stay")
    old_config = model.config
    new_config = pruned_config(old_config, kept)
    new_layers = nn.ModuleList([layers[i] for i in kept])
    for new_idx, layer in enumerate(new_layers):
        renumber_layer(layer, new_idx)
    _set_attr_path(model, path, new_layers)
    _replace_config_everywhere(model, old_config, new_config)
    old_text, new_text = text_config(old_config), text_config(new_config)
    if old_text is not old_config:
        _replace_config_everywhere(model, old_text, new_text)
    # Layers may cache per-layer flags derived from the config (e.g. sliding window): they keep their own values,
    # which match the sliced config by construction.
    return model


def layer_output_hidden(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output (a tensor, or a tuple whose first item is one)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "hidden_states", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot find the hidden states in a decoder-layer output of type {type(output).__name__}")


def replace_layer_output_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    if isinstance(output, list):
        return [hidden] + list(output[1:])
    raise TypeError(f"cannot replace the hidden states in a decoder-layer output of type {type(output).__name__}")


def layer_input_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in ("hidden_states", "x", "inputs_embeds"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    raise TypeError("cannot find the hidden states among a decoder layer's inputs")


class PassThroughLayer(nn.Module):
    """Stands in for a decoder layer and returns its input unchanged (the layer is "skipped").

    Attribute look-ups that the model's forward makes on its layers (``attention_type``, ...) are answered by the
    original layer, which is held without registering it as a submodule.
    """

    def __init__(self, original: nn.Module):
        super().__init__()
        object.__setattr__(self, "_original", original)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return layer_input_hidden(args, kwargs)


class skip_layers:
    """Context manager: run ``model`` as if the given decoder layers were absent (they pass their input through).

    Nothing is copied and the config is untouched, so the KV-cache layout stays that of the full model; use
    :func:`keep_only_layers` for a real, saveable removal.
    """

    def __init__(self, model: nn.Module, indices: list[int] | set[int]):
        self.model = model
        self.indices = sorted(set(int(i) for i in indices))

    def __enter__(self) -> nn.Module:
        layers = get_decoder_layers(self.model)
        self._saved = {}
        for i in self.indices:
            self._saved[i] = layers[i]
            layers[i] = PassThroughLayer(layers[i])
        return self.model

    def __exit__(self, *exc: Any) -> None:
        layers = get_decoder_layers(self.model)
        for i, layer in self._saved.items():
            layers[i] = layer


# ---- the MLP's output projections (for folding a linear map into a layer) -------------------------------------------

@dataclass(frozen=True)
class OutputProjection:
    """One weight that writes (part of) a decoder layer's MLP output.

    ``layout``: ``out_in`` (nn.Linear: y = x Wᵀ), ``in_out`` (GPT-2 Conv1D: y = x W), ``experts_out_in`` /
    ``experts_in_out`` (fused 3-D expert weights, one matrix per expert).  ``bias``: the parameter name of its bias
    (``None`` where there is none); ``path``: where it sits inside the layer.
    """

    module: nn.Module
    weight: str
    bias: str | None
    layout: str
    path: str


def find_mlp(layer: nn.Module) -> tuple[nn.Module, str]:
    """The module whose output is the MLP's contribution to the residual stream, and its path inside ``layer``.

    The layer's MLP sub-module (``MLP_MODULE_NAMES``), else, for layers that keep their projections on themselves
    (OPT), the output projection itself.
    """
    found = _named_child(layer, MLP_MODULE_NAMES) or _named_child(layer, MLP_OUTPUT_PROJECTION_NAMES)
    if found is not None:
        return found
    raise StreamlineError(
        f"cannot find the MLP of decoder layer {type(layer).__name__}: none of {list(MLP_MODULE_NAMES)} nor an output "
        f"projection {list(MLP_OUTPUT_PROJECTION_NAMES)}; add its name to hf_streamline.architecture.MLP_MODULE_NAMES")


def _projection_of(module: nn.Module, path: str) -> OutputProjection | None:
    if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2:
        layout = "in_out" if type(module).__name__ in TRANSPOSED_LINEAR_CLASSES else "out_in"
        bias = "bias" if isinstance(getattr(module, "bias", None), torch.Tensor) else None
        return OutputProjection(module, "weight", bias, layout, path)
    return None


def _direct_projections(mlp: nn.Module, path: str) -> list[OutputProjection]:
    found = []
    for name in MLP_OUTPUT_PROJECTION_NAMES:
        sub = getattr(mlp, name, None)
        if isinstance(sub, nn.Module):
            proj = _projection_of(sub, f"{path}.{name}")
            if proj is not None:
                found.append(proj)
                break
    return found


def _expert_projections(experts: nn.Module, path: str) -> list[OutputProjection]:
    if isinstance(experts, nn.ModuleList):  # one MLP module per expert
        found = []
        for i, expert in enumerate(experts):
            found.extend(_direct_projections(expert, f"{path}.{i}"))
        return found
    for name in MLP_OUTPUT_PROJECTION_NAMES:  # fused: (experts, out, in) or (experts, in, out)
        w = getattr(experts, name, None)
        if isinstance(w, torch.Tensor) and w.dim() == 3:
            transposed = bool(getattr(experts, "is_transposed", False)) or \
                type(experts).__name__ in TRANSPOSED_EXPERT_CLASSES
            bias = f"{name}_bias" if isinstance(getattr(experts, f"{name}_bias", None), torch.Tensor) else None
            return [OutputProjection(experts, name, bias, "experts_in_out" if transposed else "experts_out_in",
                                     f"{path}.{name}")]
    return _direct_projections(experts, path)


def mlp_output_projections(layer: nn.Module, allow_post_norm: bool = False) -> list[OutputProjection]:
    """Every weight that writes the MLP output of ``layer``: its output projection, or, in a mixture-of-experts MLP,
    each expert's (fused or not) and any shared expert's.  Read from the tables above; refuses what it cannot find
    and (unless ``allow_post_norm``: zeroing them is still exact) MLPs whose output passes through a norm before the
    residual add."""
    for name in POST_MLP_NORM_NAMES:
        if not allow_post_norm and isinstance(getattr(layer, name, None), nn.Module):
            raise StreamlineError(
                f"decoder layer {type(layer).__name__} normalises its MLP output (`{name}`) before adding it to the "
                "residual stream: a linear map after that norm cannot be folded into the MLP's weights")
    mlp, path = find_mlp(layer)
    own = _projection_of(mlp, path) if path in MLP_OUTPUT_PROJECTION_NAMES else None
    if own is not None:
        return [own]
    found = _direct_projections(mlp, path)
    for name in MOE_EXPERTS_NAMES:
        experts = getattr(mlp, name, None)
        if isinstance(experts, nn.Module):
            found.extend(_expert_projections(experts, f"{path}.{name}"))
    for name in MOE_SHARED_EXPERT_NAMES:
        shared = getattr(mlp, name, None)
        if isinstance(shared, nn.Module):
            found.extend(_expert_projections(shared, f"{path}.{name}") if isinstance(shared, nn.ModuleList)
                         else _direct_projections(shared, f"{path}.{name}"))
    if not found:
        raise StreamlineError(
            f"cannot find the output projection of the MLP `{path}` ({type(mlp).__name__}): none of "
            f"{list(MLP_OUTPUT_PROJECTION_NAMES)} (nor experts {list(MOE_EXPERTS_NAMES)} holding them); add its name "
            "to hf_streamline.architecture.MLP_OUTPUT_PROJECTION_NAMES")
    return found


# ---- sub-blocks: the attention and the MLP of a layer as separate units ---------------------------------------------

def _named_child(layer: nn.Module, names: tuple[str, ...]) -> tuple[nn.Module, str] | None:
    """The first of ``names`` that is a sub-module of ``layer``, with its name (``None`` when none is)."""
    for name in names:
        sub = getattr(layer, name, None)
        if isinstance(sub, nn.Module):
            return sub, name
    return None


def find_attention(layer: nn.Module) -> tuple[nn.Module, str]:
    """The attention sub-module of decoder ``layer`` and its attribute name (``ATTENTION_MODULE_NAMES``)."""
    found = _named_child(layer, ATTENTION_MODULE_NAMES)
    if found is not None:
        return found
    raise StreamlineError(
        f"cannot find the attention of decoder layer {type(layer).__name__}: none of {list(ATTENTION_MODULE_NAMES)}; "
        "add its name to hf_streamline.architecture.ATTENTION_MODULE_NAMES")


def find_mlp_module(layer: nn.Module) -> tuple[nn.Module, str]:
    """The MLP sub-module of decoder ``layer`` and its attribute name (``MLP_MODULE_NAMES``; a module, not a
    projection on the layer itself)."""
    found = _named_child(layer, MLP_MODULE_NAMES)
    if found is not None:
        return found
    raise StreamlineError(
        f"cannot find the MLP sub-module of decoder layer {type(layer).__name__}: none of {list(MLP_MODULE_NAMES)} "
        "(its projections sit on the layer itself, so the MLP cannot be removed as a unit)")


def find_pre_mlp_norm(layer: nn.Module) -> nn.Module:
    """The norm whose input is the residual stream between the attention and the MLP (``PRE_MLP_NORM_NAMES``)."""
    found = _named_child(layer, PRE_MLP_NORM_NAMES)
    if found is not None:
        return found[0]
    raise StreamlineError(
        f"cannot find the norm before the MLP of decoder layer {type(layer).__name__}: none of "
        f"{list(PRE_MLP_NORM_NAMES)}; add its name to hf_streamline.architecture.PRE_MLP_NORM_NAMES")


def check_separable_sublayers(model_or_config: Any) -> None:
    """Refuse architectures whose attention and MLP are not separate residual steps (parallel residual)."""
    cfg = text_config(model_or_config)
    model_type = getattr(cfg, "model_type", None)
    flags = [f for f in PARALLEL_RESIDUAL_FLAGS if bool(getattr(cfg, f, False))]
    if flags or model_type in PARALLEL_RESIDUAL_MODEL_TYPES:
        why = f"`{flags[0]}=True`" if flags else f"model type {model_type!r}"
        raise StreamlineError(
            f"{model_type!r} computes attention and MLP in parallel from the same input ({why}), so they are not "
            "separate sub-blocks: remove whole layers instead (--unit layer)")


def attention_output_projection(layer: nn.Module) -> OutputProjection:
    """The projection that writes the attention output of ``layer`` (``ATTENTION_OUTPUT_PROJECTION_NAMES``)."""
    attn, path = find_attention(layer)
    for name in ATTENTION_OUTPUT_PROJECTION_NAMES:
        sub = getattr(attn, name, None)
        if isinstance(sub, nn.Module):
            proj = _projection_of(sub, f"{path}.{name}")
            if proj is not None:
                return proj
    raise StreamlineError(
        f"cannot find the output projection of the attention `{path}` ({type(attn).__name__}): none of "
        f"{list(ATTENTION_OUTPUT_PROJECTION_NAMES)}; add its name to "
        "hf_streamline.architecture.ATTENTION_OUTPUT_PROJECTION_NAMES")
