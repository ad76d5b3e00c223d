"""``StreamlineTrainer``: a ``transformers.Trainer`` that trains a chosen subset of parameters with a pluggable objective.

- The objective comes from a registry (``mse``, ``lm``, ... ; see ``objectives/``); its loss is a per-batch mean and
  ``loss_is_scaled_for_ga`` is set from it, so gradient accumulation divides it correctly.
- ``trainable`` selects the parameters to train (regexes over parameter names, a callable, or the objective's default);
  everything else is frozen.  The recovery issue reuses this for ``lm_head`` + last k layers, LoRA (peft marks its own
  parameters trainable: pass ``trainable=None`` and an objective whose default is ``None``) and distillation.
- Checkpoints hold only the trained parameters (``trained_parameters.safetensors``) and a fingerprint of the frozen
  model, so ``resume_from_checkpoint`` refuses a checkpoint made for another model with a clear error.
- A teacher (for KL / distillation) is prepared with ``accelerator.prepare_model(teacher, evaluation_mode=True)``;
  a :class:`~hf_streamline.training.teacher_cache.TopKTeacherCache` (its top-K logits cached on disk) stands in for
  a teacher model and is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Callable, Sequence

import torch
from transformers import Trainer

from ..errors import StreamlineError
from .arguments import StreamlineTrainingArguments
from .checkpoints import CHECKPOINT_MANIFEST_NAME, TRAINED_WEIGHTS_NAME
from .objectives import Objective, get_objective


TrainableSpec = Sequence[str] | Callable[[str, torch.nn.Parameter], bool] | None


def select_trainable(model: torch.nn.Module, trainable: TrainableSpec) -> list[str]:
    """Freeze every parameter of ``model`` except those selected; return the trained parameter names.

    ``trainable``: regexes (``re.search`` on the parameter name), a ``callable(name, param) -> bool``, or ``None`` to
    keep the model's own ``requires_grad`` flags (e.g. a peft model).
    """
    if trainable is not None:
        if callable(trainable):
            pick = trainable
        else:
            pats = [re.compile(p) for p in ([trainable] if isinstance(trainable, str) else trainable)]
            pick = lambda name, _p: any(p.search(name) for p in pats)  # noqa: E731
        for name, param in model.named_parameters():
            param.requires_grad_(bool(pick(name, param)))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise StreamlineError(
            f"no trainable parameters: the selection {trainable!r} matches no parameter of {type(model).__name__} "
            "(give regexes over names from model.named_parameters())"
        )
    return names


def model_fingerprint(model: torch.nn.Module, trained: Sequence[str]) -> dict[str, Any]:
    """Identify the model a checkpoint belongs to: the names and shapes of all parameters, and a checksum of the
    frozen ones (their values do not change during training)."""
    trained_set = set(trained)
    h = hashlib.sha256()
    total, frozen_sum, frozen_abs = 0, 0.0, 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}:{tuple(p.shape)};".encode())
            total += p.numel()
            if name not in trained_set and p.numel() and p.device.type != "meta":  # meta: offloaded (--sequential)
                x = p.detach().float()
                frozen_sum += float(x.sum())
                frozen_abs += float(x.abs().sum())
    signature = getattr(model, "streamline_signature", None)  # e.g. which block a replacement stands in for
    if signature is not None:
        h.update(repr(signature).encode())
    return {"structure": h.hexdigest(), "num_parameters": total, "frozen_sum": frozen_sum, "frozen_abs_sum": frozen_abs,
            "model_class": type(model).__name__}


def _same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("structure") != b.get("structure"):
        return False
    for key in ("frozen_sum", "frozen_abs_sum"):
        x, y = float(a.get(key, 0.0)), float(b.get(key, 0.0))
        if abs(x - y) > 1e-4 * max(1.0, abs(x), abs(y)):
            return False
    return True


def save_trained_parameters(model: torch.nn.Module, folder: str | os.PathLike, trained: Sequence[str],
                            fingerprint: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    wanted = set(trained)
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if n in wanted}
    save_file(tensors, os.path.join(folder, TRAINED_WEIGHTS_NAME), metadata={"format": "pt"})
    manifest = {"trained_parameters": {n: list(t.shape) for n, t in tensors.items()},
                "fingerprint": fingerprint or model_fingerprint(model, trained)}
    manifest.update(extra or {})
    with open(os.path.join(folder, CHECKPOINT_MANIFEST_NAME), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)


def load_trained_parameters(model: torch.nn.Module, folder: str | os.PathLike,
                            fingerprint: dict[str, Any] | None = None) -> list[str]:
    """Load a checkpoint written by :func:`save_trained_parameters` into ``model``; refuse one of another model."""
    from safetensors.torch import load_file

    folder = str(folder)
    weights, manifest_path = os.path.join(folder, TRAINED_WEIGHTS_NAME), os.path.join(folder, CHECKPOINT_MANIFEST_NAME)
    if not os.path.isfile(weights) or not os.path.isfile(manifest_path):
        raise StreamlineError(
            f"resume_from_checkpoint={folder!r} is not a StreamlineTrainer checkpoint (no {TRAINED_WEIGHTS_NAME} / "
            f"{CHECKPOINT_MANIFEST_NAME}); give a checkpoint-N folder written by this trainer"
        )
    with open(manifest_path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    params = dict(model.named_parameters())
    saved = manifest.get("trained_parameters", {})
    wrong = [n for n, shape in saved.items() if n not in params or list(params[n].shape) != list(shape)]
    theirs = manifest.get("fingerprint", {})
    if wrong or (fingerprint is not None and not _same_model(fingerprint, theirs)):
        detail = (f"parameters {wrong[:3]} do not exist with those shapes in this model" if wrong else
                  "the frozen weights differ (another base model, block, replacement or healing method)")
        raise StreamlineError(
            f"resume_from_checkpoint={folder!r} was written for another model ({theirs.get('model_class', '?')}, "
            f"{theirs.get('num_parameters', '?')} parameters): {detail}. Resume only with the same base model, "
            "block, replacement and healing method (and its options), or start without resume_from_checkpoint"
        )
    state = load_file(weights)
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    return list(state)


class StreamlineTrainer(Trainer):
    """``transformers.Trainer`` for partial training with a registered objective (see module docstring)."""

    def __init__(self, model: torch.nn.Module, args: StreamlineTrainingArguments | None = None, *,
                 objective: str | Objective | None = None, teacher: torch.nn.Module | Any = None,
                 trainable: TrainableSpec | str = "default", plan: Any = None, **kwargs: Any):
        if args is None:
            args = StreamlineTrainingArguments(output_dir="streamline_trainer_output")
        opts = {"mask": getattr(args, "mse_mask", "causal"), "kl_weight": getattr(args, "kl_weight", 0.0),
                "kl_temperature": getattr(args, "kl_temperature", 1.0), "lm_weight": getattr(args, "lm_weight", 1.0)}
        self.objective = get_objective(objective or getattr(args, "objective", "mse"), **opts)
        if args.remove_unused_columns:
            args.remove_unused_columns = False  # our batches carry keys the model's forward does not name
        if args.label_names is None:
            args.label_names = list(self.objective.label_names)
        if isinstance(trainable, str) and trainable == "default":
            trainable = self.objective.default_trainable(model)
        self.trainable_names = select_trainable(model, trainable)
        self.fingerprint = model_fingerprint(model, self.trainable_names)
        self.plan = plan
        from ..offload import is_offloaded

        if getattr(model, "hf_device_map", None) is None and is_offloaded(model):
            model.hf_device_map = {"": "disk"}  # --sequential: accelerate places the layers; Trainer must not .to() it
        super().__init__(model=model, args=args, **kwargs)
        self.loss_is_scaled_for_ga = self.objective.loss_is_scaled_for_ga
        self.teacher = None
        if teacher is not None and not isinstance(teacher, torch.nn.Module):
            self.teacher = teacher  # e.g. a TopKTeacherCache: the teacher's top-k logits read from disk
        elif teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        elif self.objective.needs_teacher:
            raise StreamlineError(f"objective {self.objective.name!r} with these options needs teacher=... (the dense model)")

    # ---- data: datasets that know their best order (disk shards) bring their own sampler --------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        make = getattr(dataset, "sampler", None)
        if callable(make) and self.args.world_size <= 1:
            return make(self.args.seed)
        return super()._get_train_sampler(train_dataset)

    # ---- loss -----------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.objective.compute_loss(self, model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    # ---- checkpoints: only the trained parameters -------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        save_trained_parameters(model, output_dir, self.trainable_names, self.fingerprint,
                                extra={"objective": self.objective.name, **self.checkpoint_extra()})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a subclass keeps in each checkpoint's manifest beside the trained parameters (e.g. counters that a
        resumed run continues)."""
        return {}

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        load_trained_parameters(model, resume_from_checkpoint, self.fingerprint)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    # ---- model card -----------------------------------------------------------------------------------------------
    def create_model_card(self, folder: str | os.PathLike | None = None, **extra: Any) -> Any:
        """Write the model card through ``hf_streamline.publishing.write_model_card`` where that module exists."""
        try:
            from ..publishing import write_model_card
        except ImportError:
            return None
        extra = {k: v for k, v in extra.items() if v is not None}
        extra.setdefault("training", {"objective": self.objective.name, "trained_parameters": len(self.trainable_names),
                                      "global_step": self.state.global_step})
        return write_model_card(folder or self.args.output_dir, plan=self.plan, extra=extra)
