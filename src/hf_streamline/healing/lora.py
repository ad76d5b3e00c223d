"""``lora``: low-rank adapters through peft on the (frozen) pruned model.

Target modules default to every linear layer inside the decoder layers, found generically (``nn.Linear``,
transformers' ``Conv1D`` of GPT-2, bitsandbytes' 4-bit linears), so the same code serves Llama, GPT-2 and
``StreamlineForCausalLM`` (whose replacement MLPs sit in the decoder list).  The result is either the adapter
(a folder peft's ``AutoPeftModelForCausalLM`` loads) or, merged (``merge_and_unload``), a plain checkpoint.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..architecture import find_decoder_layers_path
from ..errors import StreamlineError
from .base import HealingMethod, Prepared, config_default, register_healing_method, spec_int


def _linear_types() -> tuple[type, ...]:
    types: list[type] = [nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D

        types.append(Conv1D)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear module of ``model`` by name (peft's names: relative to the model, adapters excluded)."""
    types = _linear_types()
    return {n: m for n, m in model.named_modules()
            if isinstance(m, types) and "lora_" not in n and not n.endswith(("base_layer",))}


def resolve_lora_targets(model: nn.Module, targets: Sequence[str] | None = None) -> list[str]:
    """Full names of the modules that get adapters.

    ``targets=None``: every linear layer inside the decoder layers.  Otherwise each entry is a module name or a
    suffix of one (``q_proj``, ``self_attn.o_proj``, ``model.layers.3.mlp.down_proj``) matched against every linear
    module of the model; an entry that matches nothing is an error that names it.
    """
    linears = linear_modules(model)
    path = find_decoder_layers_path(model)
    in_layers = [n for n in linears if n.startswith(path + ".")]
    if targets is None:
        if not in_layers:
            raise StreamlineError(f"{type(model).__name__} has no linear layers inside its decoder layers ({path}); "
                                  "name the modules to adapt", argument="config.lora_targets")
        return in_layers
    chosen: list[str] = []
    missing: list[str] = []
    for t in targets:
        t = str(t).strip()
        hits = [n for n in linears if n == t or n.endswith("." + t)]
        if not hits:
            missing.append(t)
        chosen.extend(h for h in hits if h not in chosen)
    if missing:
        suffixes = sorted({n[len(path) + 1:].split(".", 1)[1] for n in in_layers if "." in n[len(path) + 1:]})
        raise StreamlineError(
            f"LoRA target(s) {missing} match no linear module of {type(model).__name__}; "
            f"linear modules inside the decoder layers are named {suffixes} (give names from that list, or leave it "
            "out to adapt all of them)", argument="config.lora_targets"
        )
    return chosen


def targets_regex(model: nn.Module, names: Sequence[str]) -> str:
    """A compact regex (peft ``re.fullmatch``s it against module names) that matches exactly ``names``."""
    path = find_decoder_layers_path(model)
    by_suffix: dict[str, list[int]] = {}
    others: list[str] = []
    for n in names:
        rest = n[len(path) + 1:] if n.startswith(path + ".") else None
        if rest and "." in rest and rest.split(".", 1)[0].isdigit():
            idx, suffix = rest.split(".", 1)
            by_suffix.setdefault(suffix, []).append(int(idx))
        else:
            others.append(re.escape(n))
    groups: dict[tuple[int, ...], list[str]] = {}
    for suffix, idx in by_suffix.items():
        groups.setdefault(tuple(sorted(idx)), []).append(re.escape(suffix))
    alts = []
    for idx, suffixes in groups.items():
        alts.append(rf"{re.escape(path)}\.({'|'.join(str(i) for i in idx)})\.({'|'.join(sorted(suffixes))})")
    alts.extend(others)
    return "(" + "|".join(alts) + ")"


def lora_config(model: nn.Module, config: Any, target_names: Sequence[str]):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=int(config.lora_r), lora_alpha=int(config.lora_alpha),
                      lora_dropout=float(config.lora_dropout), target_modules=targets_regex(model, target_names),
                      bias="none")


def check_lora_options(config: Any) -> None:
    if int(config.lora_r) < 1:
        raise StreamlineError("must be >= 1", argument="config.lora_r", value=config.lora_r)
    if not 0.0 <= float(config.lora_dropout) < 1.0:
        raise StreamlineError("must be in [0, 1)", argument="config.lora_dropout", value=config.lora_dropout)


def wrap_with_lora(model: nn.Module, config: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Freeze ``model`` and add LoRA adapters; returns (peft model, description)."""
    from peft import get_peft_model

    check_lora_options(config)
    names = resolve_lora_targets(model, config.lora_targets)
    cfg = lora_config(model, config, names)
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(model, cfg)
    info = {"lora_r": int(config.lora_r), "lora_alpha": int(config.lora_alpha), "lora_dropout": float(config.lora_dropout),
            "target_modules": len(names), "target_names": sorted({n.rsplit(".", 1)[-1] for n in names}),
            "target_regex": cfg.target_modules, "input_embedding": "unchanged"}
    return peft_model, info


@dataclass
class AdapterBundle:
    """A trained adapter detached from its model: the peft config and the adapter weights (what
    ``PeftModel.save_pretrained`` writes), so it can be saved after the working model was merged."""

    peft_config: Any
    state_dict: dict[str, torch.Tensor]

    @classmethod
    def from_peft(cls, peft_model: nn.Module, adapter_name: str = "default") -> "AdapterBundle":
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False)
        cfg = copy.deepcopy(peft_model.peft_config[adapter_name])
        return cls(cfg, {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()})

    def save(self, folder: str | os.PathLike, base_model_name_or_path: str | None = None) -> None:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (loadable by ``AutoPeftModelForCausalLM``
        and ``PeftModel.from_pretrained``)."""
        from peft.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import save_file

        cfg = copy.deepcopy(self.peft_config)
        if base_model_name_or_path is not None:
            cfg.base_model_name_or_path = str(base_model_name_or_path)
        cfg.inference_mode = True
        os.makedirs(folder, exist_ok=True)
        cfg.save_pretrained(str(folder))
        save_file(self.state_dict, os.path.join(str(folder), SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})

    def apply_to(self, model: nn.Module) -> nn.Module:
        """Put this adapter on ``model`` (e.g. the full-precision base of a QLoRA run); returns the peft model."""
        from peft import get_peft_model, set_peft_model_state_dict

        cfg = copy.deepcopy(self.peft_config)
        cfg.inference_mode = True
        peft_model = get_peft_model(model, cfg)
        result = set_peft_model_state_dict(peft_model, self.state_dict)
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing:
            raise StreamlineError(f"the adapter does not fit this model: {len(missing)} adapter weights missing "
                                  f"(e.g. {missing[0]})")
        peft_model.eval()
        return peft_model


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """``merge_and_unload``: the adapters folded into the weights; returns the plain model."""
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


@register_healing_method
class LoraHealing(HealingMethod):
    name = "lora"
    citation = None
    description = "LoRA adapters (peft) on every linear layer of the decoder layers; the base stays frozen"
    default_learning_rate = 5e-4
    adapter = True

    def check(self, model: nn.Module) -> None:
        check_lora_options(self.config)
        resolve_lora_targets(model, self.config.lora_targets)

    def prepare(self, model: nn.Module, model_path: str | None = None) -> Prepared:
        peft_model, info = wrap_with_lora(model, self.config)
        return Prepared(peft_model, None, info)

    def finish(self, prepared: Prepared, merge: bool = True) -> tuple[nn.Module, Any]:
        peft_model = prepared.model
        peft_model.eval()
        adapter = AdapterBundle.from_peft(peft_model)
        return (merge_lora(peft_model) if merge else peft_model), adapter

    def spec(self) -> str:
        r = self.config.lora_r
        return self.name if r == config_default("lora_r") else f"{self.name}:{r}"

    @classmethod
    def parse_options(cls, spec: str, options: list[str]) -> dict[str, Any]:
        """``lora:R`` / ``qlora:R``: the rank."""
        if not options:
            return {}
        return {"lora_r": spec_int(spec, options[0], "rank"), **super().parse_options(spec, options[1:])}
