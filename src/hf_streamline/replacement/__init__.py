"""LLM-Streamline layer replacement: a redundant block of decoder layers becomes one small trained module.

Replacement kinds live in one registry (``KINDS``), one file each: ``decoder_layer``, ``mlp``, ``none``, and
``linear`` (training-free: a fitted linear map folded into the previous layer, ReplaceMe; see ``replace_linear``).
"""

from . import decoder_layer, linear, mlp, none  # noqa: F401 - registration
from .activations import (ACTIVATION_MODES, BlockReplacementTask, ShardedActivations, TokenWindows,
                          cache_block_activations, capture_block, layer_context, token_windows)
from .api import (build_replacement, choose_block, install_replacement, replace_block, save_replaced, streamline,
                  train_replacement, validate_block)
from .base import KINDS, ReplacementKind, ReplacementOptions, get_kind, register_kind
from .linear import LinearOptions, collect_linear_fit, fold_linear_map, replace_linear

__all__ = ["ACTIVATION_MODES", "BlockReplacementTask", "KINDS", "LinearOptions", "ReplacementKind",
           "ReplacementOptions", "ShardedActivations", "TokenWindows", "build_replacement", "cache_block_activations",
           "capture_block", "choose_block", "collect_linear_fit", "fold_linear_map", "get_kind", "install_replacement",
           "layer_context", "register_kind", "replace_block", "replace_linear", "save_replaced", "streamline",
           "token_windows", "train_replacement", "validate_block"]
