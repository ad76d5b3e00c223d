"""``partial``: full-parameter training of ``lm_head``, the final norm and the last K decoder layers; the rest frozen.

This is the Reassessing paper's recipe ("lm_head + last three layers").  Tied embeddings get an explicit policy:
``untie`` gives ``lm_head`` its own copy of the shared matrix and sets ``tie_word_embeddings=False``, so the input
embedding never changes and the result saves and loads as a plain checkpoint -- with one more vocabulary x hidden
matrix (28M parameters on SmolLM2-135M, as much as 8 of its 30 layers); ``train-shared`` trains the shared matrix,
which changes the input embedding too, and says so in the record.  ``auto`` (the default) unties only where the
untied model is still no larger than its base model (``base_parameters``; unknown = never), so healing never undoes
what pruning saved.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..architecture import find_decoder_layers_path, get_decoder_layers, get_final_norm, num_layers
from ..errors import StreamlineError
from ..options import is_cut, parse_last_k
from ..utils import param_names_of
from .base import (TIED_POLICIES, HealingMethod, Prepared, count_parameters, embeddings_tied,
                   register_healing_method, spec_int, untie_output_embeddings)



def resolve_last_k(last_k: int | str, plan: Any) -> int:
    """``last_k`` as a number: ``"cut"`` becomes the count of layers at or above the position of the first removed
    layer of ``plan`` (a :class:`~hf_streamline.plan.StreamlinePlan`), i.e. every layer whose input changed;
    ``"cut+N"`` adds the N layers below that position (at most every layer)."""
    last_k = parse_last_k(last_k)
    if not is_cut(last_k):
        return last_k
    removed = sorted(getattr(plan, "removed_layers", None) or [])
    if not removed:
        raise StreamlineError("trains the layers above the first removed layer, but this model's plan removes none "
                              "(not a pruned folder?); give a number of layers", argument="last_k", value=last_k)
    below = int(last_k.partition("+")[2] or 0)
    above = max(0, plan.num_layers_after - removed[0])
    return min(plan.num_layers_after, above + below)


def check_last_k(model: nn.Module, k: int | str) -> None:
    if is_cut(k):
        raise StreamlineError(f"last_k={k!r} (counted from the first removed layer) needs the pruned model's plan: "
                              "heal the pruned folder (`hf-streamline heal`, `compare-healing`, a recipe), or "
                              "resolve it with hf_streamline.healing.partial.resolve_last_k(last_k, plan)")
    L = num_layers(model)
    if k < 0 or k > L:
        raise StreamlineError(
            f"larger than the {L} decoder layers the pruned model has left; use a value in 0..{L}"
            if k > L else "must be >= 0 (0 trains lm_head and the final norm only)", argument="last_k", value=k
        )


def resolve_tied_policy(model: nn.Module, tied_policy: str, base_parameters: int | None = None
                        ) -> tuple[str, str | None]:
    """``(untie | train-shared, why)`` for ``auto``: untie only if the untied model stays within ``base_parameters``."""
    if tied_policy != "auto":
        return tied_policy, None
    size = count_parameters(model)
    copy = model.get_output_embeddings().weight.numel()
    if base_parameters is not None and size + copy <= base_parameters:
        return "untie", (f"auto: untied, the model has {size + copy:,} parameters with its own lm_head, no more than "
                         f"the base model's {base_parameters:,}")
    if base_parameters is None:
        return "train-shared", (f"auto: kept tied, untying would add {copy:,} parameters and the base model's size "
                                "is not known")
    return "train-shared", (f"auto: kept tied, untying would add {copy:,} parameters: {size + copy:,}, more than the "
                            f"base model's {base_parameters:,}")


def partial_trainable(model: nn.Module, k: int, tied_policy: str = "auto",
                      base_parameters: int | None = None, freeze_lm_head: bool = False) -> tuple[list[str], dict[str, Any]]:
    """Apply the tied-embeddings policy to ``model`` and return (names of the parameters to train, description).
    ``freeze_lm_head``: lm_head is not trained (nor untied): the final norm and the last ``k`` layers are."""
    if tied_policy not in TIED_POLICIES:
        raise StreamlineError(f"unknown; use one of {list(TIED_POLICIES)}", argument="tied_policy", value=tied_policy)
    check_last_k(model, k)
    tied = embeddings_tied(model)
    info: dict[str, Any] = {"last_k": k, "tied_embeddings": tied}
    if freeze_lm_head:
        info["lm_head"] = "frozen"
        info["input_embedding"] = "unchanged"
    elif tied:
        requested = tied_policy
        tied_policy, why = resolve_tied_policy(model, tied_policy, base_parameters)
        info["tied_policy"] = tied_policy
        if requested != tied_policy:
            info["tied_policy_requested"], info["tied_policy_reason"] = requested, why
        if tied_policy == "untie":
            untie_output_embeddings(model)
            info["input_embedding"] = "unchanged (lm_head untied: it trains its own copy of the shared matrix)"
        else:
            info["input_embedding"] = "TRAINED (shared with lm_head: the input embedding changes too)"
    else:
        info["input_embedding"] = "unchanged"
    head = model.get_output_embeddings()
    if head is None:
        raise StreamlineError(f"{type(model).__name__} has no output embeddings (lm_head); partial healing needs one")
    modules: list[nn.Module] = [] if freeze_lm_head else [head]
    norm = get_final_norm(model)
    if norm is not None:
        modules.append(norm)
    layers = get_decoder_layers(model)
    L = len(layers)
    modules.extend(layers[L - k:] if k else [])
    names = param_names_of(model, modules)
    path = find_decoder_layers_path(model)
    info["trained_modules"] = ([] if freeze_lm_head else ["lm_head"]) + ((["final_norm"] if norm is not None else [])
                               + [f"{path}.{i}" for i in range(L - k, L)])
    return names, info


@register_healing_method
class PartialHealing(HealingMethod):
    name = "partial"
    citation = ("lu2024reassessing", "partial fine-tuning of the last layers after pruning")
    description = "full-parameter training of lm_head, the final norm and the last K decoder layers"
    default_learning_rate = 1e-4

    def check(self, model: nn.Module) -> None:
        check_last_k(model, parse_last_k(self.config.last_k))
        if self.config.tied_policy not in TIED_POLICIES:
            raise StreamlineError(f"unknown; use one of {list(TIED_POLICIES)}", argument="config.tied_policy",
                                  value=self.config.tied_policy)

    def prepare(self, model: nn.Module, model_path: str | None = None) -> Prepared:
        names, info = partial_trainable(model, int(self.config.last_k), self.config.tied_policy,
                                        getattr(self.config, "base_parameters", None),
                                        freeze_lm_head=bool(getattr(self.config, "freeze_lm_head", False)))
        wanted = set(names)
        return Prepared(model, lambda n, _p: n in wanted, info)

    def spec(self) -> str:
        return f"partial:{self.config.last_k}"

    @classmethod
    def parse_options(cls, spec: str, options: list[str]) -> dict[str, Any]:
        """``partial:K``: the last K layers."""
        if not options:
            return {}
        return {"last_k": spec_int(spec, options[0], "K (last layers)"), **super().parse_options(spec, options[1:])}
