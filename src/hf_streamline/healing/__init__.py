"""Healing pruned models: partial-layer fine-tuning, LoRA / QLoRA (peft), distillation from the dense model,
iterative prune-heal, and a side-by-side comparison under one token budget.  See docs/healing.md.

One method per file, all in one registry (``HEALING_METHODS``); a new method is one file with a
``@register_healing_method`` class.
"""

from . import distill, lora, partial, qlora  # noqa: F401 - registration
from .api import HealingResult, PeakMemory, heal, plan_for, save_healed
from .base import (HEALING_METHODS, TIED_POLICIES, HealingConfig, HealingMethod, Prepared, embeddings_tied,
                   get_healing_method, parse_method_spec, register_healing_method, untie_output_embeddings)
from .data import (ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, HealingData, HealingDataConfig, load_healing_data,
                   load_pooled_healing_data,
                   steps_for_budget, tokenize_instruction)
from .iterative import iterative_prune_and_heal
from .lora import AdapterBundle, merge_lora, resolve_lora_targets
from .qlora import bitsandbytes_problem

__all__ = [
    "ALPACA_PROMPT", "ALPACA_PROMPT_NO_INPUT", "AdapterBundle", "HEALING_METHODS", "HealingConfig", "HealingData",
    "HealingDataConfig", "HealingMethod", "HealingResult", "PeakMemory", "Prepared", "TIED_POLICIES",
    "bitsandbytes_problem", "compare_healing", "embeddings_tied", "get_healing_method", "heal",
    "iterative_prune_and_heal", "load_healing_data", "load_pooled_healing_data", "merge_lora", "parse_method_spec", "plan_for",
    "register_healing_method", "resolve_lora_targets", "save_healed", "steps_for_budget", "tokenize_instruction",
    "untie_output_embeddings", "write_comparison",
]


def __getattr__(name: str):  # the comparison pulls in evaluation and plotting: import it on first use
    if name in ("compare_healing", "write_comparison", "CompareConfig"):
        from . import compare

        return getattr(compare, name)
    raise AttributeError(name)
