"""``heal``: train a pruned model with one healing method; ``save_healed``: write it with its plan and model card."""

from __future__ import annotations

import gc
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..architecture import check_causal_lm, num_layers
from ..errors import StreamlineError
from ..log import bars_on
from ..plan import StreamlinePlan, base_config_record
from ..pruning import output_name, save_pruned, write_optional_model_card
from ..utils import atomic_output_dir, is_main_process, model_device, versions, wait_for_everyone
from .base import HealingConfig, HealingMethod, count_parameters, get_healing_method
from .data import HealingData, steps_for_budget


def _healing_trainer_class():
    from ..training import StreamlineTrainer

    class HealingTrainer(StreamlineTrainer):
        """``StreamlineTrainer`` that counts the real tokens of every training micro-batch (the token budget)."""

        train_tokens = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and "attention_mask" in inputs:
                self.train_tokens += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def checkpoint_extra(self) -> dict[str, Any]:
            return {"train_tokens": int(self.train_tokens)}

        def train(self, resume_from_checkpoint=None, **kwargs):
            if resume_from_checkpoint:  # a resumed run counts on from the tokens seen before its checkpoint
                import json

                from ..training import CHECKPOINT_MANIFEST_NAME

                with open(os.path.join(str(resume_from_checkpoint), CHECKPOINT_MANIFEST_NAME), encoding="utf-8") as fh:
                    self.train_tokens = int(json.load(fh).get("train_tokens", 0))
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    return HealingTrainer


def _all_processes(count: int) -> int:
    """``count`` summed over the processes of a distributed run (each one counts its own batches)."""
    import torch

    from ..utils import all_reduce_sum

    return int(all_reduce_sum(torch.tensor([int(count)], dtype=torch.long)).item())


class PeakMemory:
    """Peak memory while the block runs: CUDA ``max_memory_allocated`` on a GPU, else the process RSS sampled
    every 20 ms (``peak_mb``: the highest value; ``delta_mb``: its rise over the value at the start)."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.02):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_mb = 0.0
        self.start_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss_mb() -> float:
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.start_mb = self.peak_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    @property
    def delta_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cuda_allocated" if self.device.type == "cuda" else "process_rss",
                "peak_mb": round(self.peak_mb, 1), "delta_mb": round(self.delta_mb, 1)}


@dataclass
class HealingResult:
    """The healed model (plain or merged; a peft model for an unmerged adapter), the adapter where there is one,
    and the record that goes into the plan's ``healing`` list."""

    model: nn.Module
    record: dict[str, Any]
    adapter: Any = None  # lora.AdapterBundle
    method: HealingMethod | None = field(default=None, repr=False)

    @property
    def merged(self) -> bool:
        return bool(self.record.get("merged", True))


def _eval_batch_size(batch_size: int, n_eval: int) -> int:
    """The largest size <= ``batch_size`` that divides the validation set (training drops incomplete batches, and
    the evaluation loader follows that setting)."""
    if n_eval <= 0:
        return batch_size
    return next(d for d in range(min(batch_size, n_eval), 0, -1) if n_eval % d == 0)


def training_arguments(config: HealingConfig, method: HealingMethod, data: HealingData, output_dir: str,
                       device: torch.device, save_steps: int | None = None) -> Any:
    from ..training import StreamlineTrainingArguments

    if config.max_steps is not None and config.budget_tokens is not None:
        raise StreamlineError("give it or config.max_steps, not both", argument="config.budget_tokens",
                              value=config.budget_tokens)
    if config.batch_size < 1 or config.grad_accum < 1:
        bad = "batch_size" if config.batch_size < 1 else "grad_accum"
        raise StreamlineError("must be >= 1", argument=f"config.{bad}", value=getattr(config, bad))
    if config.max_steps is not None:
        if config.max_steps < 1:
            raise StreamlineError("must be >= 1", argument="config.max_steps", value=config.max_steps)
        max_steps = int(config.max_steps)
    elif config.budget_tokens is not None:
        max_steps = steps_for_budget(int(config.budget_tokens), data, config.batch_size, config.grad_accum)
    else:
        per_epoch = max(1, len(data.train) // (config.batch_size * config.grad_accum))
        max_steps = max(1, int(round(per_epoch * float(config.epochs))))
    if len(data.train) < config.batch_size * config.grad_accum and config.grad_accum > 1:
        raise StreamlineError(f"{len(data.train)} training examples are fewer than one optimizer step of "
                              f"{config.batch_size} x {config.grad_accum}; give more data or lower it",
                              argument="config.grad_accum", value=config.grad_accum)
    has_eval = data.eval is not None and len(data.eval) > 0
    eval_steps = int(config.eval_steps) if config.eval_steps else max(1, max_steps // 4)
    save_steps = int(save_steps or 0)
    if save_steps < 0:
        raise StreamlineError("must be >= 1 (0 = no checkpoints to resume from)", argument="save_steps",
                              value=save_steps)
    best = has_eval and config.best_checkpoint
    if save_steps and best and save_steps % eval_steps:
        if config.eval_steps:
            raise StreamlineError(f"must be a multiple of config.eval_steps ({eval_steps}: the best validation step is "
                                  "chosen among the saved checkpoints), or set config.best_checkpoint=False",
                                  argument="save_steps", value=save_steps)
        eval_steps = max(d for d in range(1, eval_steps + 1) if save_steps % d == 0)  # validate at every save
    opts = method.objective_options()
    kw: dict[str, Any] = dict(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=_eval_batch_size(config.batch_size, len(data.eval) if data.eval is not None else 0), gradient_accumulation_steps=config.grad_accum,
        learning_rate=method.learning_rate, lr_scheduler_type=config.lr_scheduler, warmup_steps=float(config.warmup_ratio),
        weight_decay=config.weight_decay, seed=config.seed, data_seed=config.seed,
        disable_tqdm=not bars_on(config.progress),
        logging_steps=max(1, min(10, max_steps // 10 or 1)), optim="adamw_torch",
        use_cpu=device.type == "cpu", save_only_model=not save_steps,  # resumable checkpoints: + optimizer, RNG
        dataloader_drop_last=len(data.train) >= config.batch_size,  # full batches: the token budget holds exactly
        **opts)
    if has_eval:
        kw.update(eval_strategy="steps", eval_steps=eval_steps)
        if config.best_checkpoint:
            kw.update(save_strategy="steps", save_steps=save_steps or eval_steps, load_best_model_at_end=True,
                      metric_for_best_model="eval_loss", greater_is_better=False, save_total_limit=1)
    if save_steps and not best:  # the newest checkpoint is all a resume needs
        kw.update(save_strategy="steps", save_steps=save_steps, save_total_limit=1)
    kw.update(check_training_args(config.training_args))
    return StreamlineTrainingArguments(**kw)


# TrainingArguments fields that the healing run sets itself -> the argument that sets them (HealingConfig's fields and
# heal()'s; the same names on the command line)
_SET_BY = {"learning_rate": "learning_rate", "max_steps": "max_steps", "num_train_epochs": "epochs",
           "per_device_train_batch_size": "batch_size", "per_device_eval_batch_size": "batch_size",
           "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "lr_scheduler",
           "warmup_steps": "warmup_ratio", "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay",
           "seed": "seed", "data_seed": "seed", "eval_steps": "eval_steps", "eval_strategy": "eval_steps",
           "load_best_model_at_end": "best_checkpoint", "metric_for_best_model": "best_checkpoint",
           "greater_is_better": "best_checkpoint", "disable_tqdm": "progress", "save_steps": "save_steps",
           "save_strategy": "save_steps", "save_total_limit": "save_steps", "save_only_model": "save_steps",
           "output_dir": "output_dir", "resume_from_checkpoint": "resume_from_checkpoint"}
# fields that would break the run or leave this machine: not through training_args
_REFUSED = {"remove_unused_columns": "the healing collator needs every column",
            "prediction_loss_only": "the evaluation reads the loss only, as it is",
            "push_to_hub": "publish the healed folder with push_to_hub / `hf-streamline push`, which never writes a "
                           "token", "hub_token": "a token is never written or passed here",
            "hub_model_id": "publish with push_to_hub / `hf-streamline push`",
            "hub_strategy": "publish with push_to_hub / `hf-streamline push`",
            "hub_private_repo": "publish with push_to_hub / `hf-streamline push`"}


def check_training_args(extra: dict[str, Any] | None) -> dict[str, Any]:
    """``HealingConfig.training_args``: every key a ``transformers.TrainingArguments`` field that the healing run does
    not set itself (the others -- ``optim``, ``max_grad_norm``, ``gradient_checkpointing``, ``bf16``,
    ``logging_steps`` ... -- reach the Trainer as given)."""
    import dataclasses

    from transformers import TrainingArguments

    extra = dict(extra or {})
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in extra:
        if key not in known:
            raise StreamlineError(f"{key!r} is not a transformers.TrainingArguments field", argument="config.training_args")
        if key in _SET_BY:
            raise StreamlineError(f"{key!r} is set by the healing run itself; use {{{_SET_BY[key]}}}",
                                  argument="config.training_args", mentions=(_SET_BY[key],))
        if key in _REFUSED or key.startswith("hub_"):
            raise StreamlineError(f"{key!r} is not taken here: {_REFUSED.get(key, 'publish with push_to_hub')}",
                                  argument="config.training_args")
    return extra


def heal(model: nn.Module, tokenizer: Any, data: HealingData, config: HealingConfig | str | None = None, *,
         teacher: nn.Module | Any = None, model_path: str | os.PathLike | None = None, merge: bool = True,
         output_dir: str | os.PathLike | None = None, save_steps: int | None = None,
         resume_from_checkpoint: str | os.PathLike | bool | None = None, callbacks: list[Any] | None = None,
         **overrides: Any) -> HealingResult:
    """Heal ``model`` (in place for full-parameter methods) on ``data`` with one method.

    ``config``: a :class:`HealingConfig` or a method spec (``partial:3``, ``lora``, ``qlora``, ``distill:lora``);
    ``overrides`` set fields of the config.  ``teacher``: the dense model (``distill``), or a callable without
    arguments that returns it (called once, only by a method that distills).  With ``kd_top_k`` = K, the teacher's
    top-K logits over the training and validation examples are written to ``output_dir/kd_topk_cache`` (or the work
    folder) in one pass, ``heal`` drops its reference to the teacher before training (it is freed unless the caller
    keeps one: pass a loader to let it go), trains against the cache and removes it at the end; the record's
    ``kd_cache`` says how large it was and whether the teacher was freed.  With ``self_distill`` = N the teacher
    (required, for every method) first continues a prompt of every training example by N tokens and those
    continuations are the training set (:mod:`hf_streamline.healing.self_distill`; the validation split stays the
    original data); the record's ``self_distill`` holds the cost.  A method that does not distill drops its
    reference to the teacher after generating (pass a loader to let it be freed before training).  ``model_path``: the folder
    ``model`` was loaded from *unchanged* (QLoRA loads its 4-bit copy from it; otherwise it writes a temporary copy).
    ``merge``: fold LoRA/QLoRA adapters into the weights (the result is a plain model; the adapter is kept in
    ``result.adapter`` either way).  Returns a :class:`HealingResult`.

    ``output_dir``: the trainer's folder (checkpoints ``checkpoint-N``); the caller owns it (the CLI uses
    ``OUTPUT.training`` and removes it after saving).  Without one, a work folder ``$TMPDIR/hf_streamline_heal_*``
    is used and removed when ``heal`` returns or raises, interrupts included.  ``save_steps``: write a checkpoint that
    resumes (trained parameters, optimizer, scheduler, RNG) every N steps.  ``resume_from_checkpoint``: a
    ``checkpoint-N`` folder, or ``"latest"`` / ``True`` for the newest in ``output_dir``; the model, data, method and
    options must be those of the interrupted run.  ``callbacks``: extra ``transformers.TrainerCallback`` objects.
    """
    if config is None:
        config = HealingConfig()
    elif isinstance(config, str):
        config = HealingConfig().with_spec(config)
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise StreamlineError(f"heal: unknown option {k!r}")
        setattr(config, k, v)
    method = get_healing_method(config)
    check_causal_lm(model)
    method.check(model)
    from ..training.checkpoints import resolve_resume

    resume = resolve_resume(resume_from_checkpoint, output_dir, flag="resume_from_checkpoint")
    self_distill = config.self_distill is not None
    if self_distill:
        from .self_distill import check_self_distill

        check_self_distill(config, data)
        if teacher is None:
            raise StreamlineError("config.self_distill needs the dense model (it generates the training "
                                  "continuations); pass it", argument="teacher")
    if method.needs_teacher or self_distill:
        from .distill import check_teacher

        if teacher is not None and not isinstance(teacher, nn.Module) and callable(teacher):
            teacher = teacher()  # a loader: called once, here
        check_teacher(model, teacher)
    elif teacher is not None and not isinstance(teacher, nn.Module):
        teacher = None  # a loader of a teacher this method does not use: never called
    kd_top_k = int(config.kd_top_k) if method.needs_teacher and config.kd_top_k else None
    kd_cache = None
    device = model_device(model)
    params_before = count_parameters(model)
    own_workdir = output_dir is None
    workdir = None
    try:
        if own_workdir:
            from ..utils import make_work_dir

            workdir = str(make_work_dir("heal"))
        else:
            workdir = str(output_dir)
            os.makedirs(workdir, exist_ok=True)
        self_distill_info, train_config = None, config
        if self_distill:  # the teacher's continuations replace the training set (validation stays the original)
            from .self_distill import full_example_tokens, self_distill_data

            steps = config.max_steps
            if steps is None and config.budget_tokens is not None:
                # the budget counted at full-length examples (prompt + N): the prompts training will see are chosen
                # before generating, and training makes one pass over their continuations (fewer tokens where the
                # teacher stops early; the record's train_tokens says how many)
                full = replace(data, tokens_per_example=full_example_tokens(data, config))
                steps = steps_for_budget(int(config.budget_tokens), full, config.batch_size, config.grad_accum)
                train_config = replace(config, max_steps=steps, budget_tokens=None)
            if steps is not None:  # generate only for the examples training will see
                data = data.take(int(steps) * config.batch_size * config.grad_accum, config.seed)
            data, self_distill_info = self_distill_data(teacher, tokenizer, data, config)
            if not method.needs_teacher:
                teacher = None  # heal's reference; the teacher is freed here unless the caller keeps one
        args = training_arguments(train_config, method, data, workdir, device, save_steps=save_steps)
        # a budget shorter than one epoch: a seeded subset, each example seen once, and only it cached/prepared
        data = data.take(args.max_steps * config.batch_size * config.grad_accum, config.seed)
        train_set, eval_set, collator = data.train, data.eval, data.collator()
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            cache_info = None
            from transformers import set_seed

            set_seed(config.seed)  # the same adapters' initialisation in an interrupted run and its resumption
            prepared = method.prepare(model, str(model_path) if model_path is not None else None)
            if kd_top_k is not None:  # the teacher's top-k logits to disk, then the teacher goes
                prefix = frozen_prefix(prepared.model, prepared.trainable) if config.prefix_cache else 0
                prefix_info = check_prefix(prepared.model, teacher, prefix, collator([data.train[0]])) if prefix else None
                kd_cache, cache_info = _cache_teacher(teacher, data, collator, kd_top_k, workdir, config,
                                                      hidden_layer=prefix if prefix_info and prefix_info["used"] else None)
                teacher = None  # heal's reference; the teacher is freed here unless the caller keeps one
                cache_info["teacher_freed"] = _collect(cache_info.pop("teacher_ref"))
                if prefix_info is not None:
                    cache_info["prefix"] = prefix_info
                from ..training.teacher_cache import IndexedExamples, indexed_collator

                train_set = IndexedExamples(data.train)
                eval_set = IndexedExamples(data.eval, len(data.train)) if data.eval is not None else None
                collator = indexed_collator(collator)
            trainer_teacher = (kd_cache if kd_cache is not None else teacher) if method.needs_teacher else None
            trainer = _healing_trainer_class()(prepared.model, args, objective="lm", trainable=prepared.trainable,
                                               teacher=trainer_teacher, train_dataset=train_set,
                                               eval_dataset=eval_set, data_collator=collator, callbacks=callbacks)
            del trainer_teacher
            if not config.progress:
                from transformers.trainer_callback import PrinterCallback

                trainer.remove_callback(PrinterCallback)
            trainable = count_parameters(prepared.model, trainable_only=True)
            eval_before = None
            if data.eval is not None and len(data.eval):
                eval_before = float(trainer.evaluate()["eval_loss"])
            prepared.model.train()
            result = trainer.train(resume_from_checkpoint=resume)
            train_time = time.perf_counter() - t0
            healed, adapter = method.finish(prepared, merge=merge)
        healed.eval()
        for p in healed.parameters():
            p.requires_grad_(False)
        history = trainer.state.log_history
        evals = [e for e in history if "eval_loss" in e]
        best = min(evals, key=lambda e: e["eval_loss"]) if evals else None
        record: dict[str, Any] = {
            "type": method.name, "method": method.spec(), "objective": "lm" + ("+kl" if method.needs_teacher else ""),
            **prepared.info,
            "trainable_parameters": trainable, "parameters_before": params_before,
            "parameters_after": count_parameters(healed), "trainable_fraction": trainable / max(1, params_before),
            "learning_rate": method.learning_rate, "lr_scheduler": config.lr_scheduler,
            "batch_size": config.batch_size, "grad_accum": config.grad_accum, "max_steps": args.max_steps,
            "global_step": trainer.state.global_step, "budget_tokens": config.budget_tokens,
            "train_tokens": _all_processes(trainer.train_tokens), "data": data.describe(),
            "eval_loss_before": eval_before, "eval_loss_best": best["eval_loss"] if best else None,
            "best_step": best.get("step") if best else None,
            "best_checkpoint_loaded": bool(best and args.load_best_model_at_end),
            "train_loss": result.metrics.get("train_loss"), "wall_time_s": round(train_time, 2),
            "peak_memory": mem.to_dict(), "device": str(device), "layers": num_layers(healed),
            "merged": bool(merge or not method.adapter), "seed": config.seed,
            "loss_curve": [{"step": e.get("step"), "loss": e.get("loss"), "eval_loss": e.get("eval_loss")}
                           for e in history if "loss" in e or "eval_loss" in e],
        }
        if config.training_args:  # what reached the Trainer besides the config (gradient checkpointing, bf16 ...)
            record["training_args"] = dict(config.training_args)
        if resume is not None:
            record["resumed_from"] = Path(resume).name
        if cache_info is not None:
            record["kd_cache"] = cache_info
        if self_distill_info is not None:
            record["self_distill"] = self_distill_info
        del trainer, prepared
        gc.collect()
        return HealingResult(healed, record, adapter, method)
    finally:
        if kd_cache is not None:
            kd_cache.delete()  # the shards never outlive the run (a resumed run writes them anew)
        if own_workdir and workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def frozen_prefix(model: nn.Module, trainable: Any) -> int:
    """How many decoder layers at the bottom of ``model`` stay frozen, with nothing below or inside them trained:
    the index of the lowest decoder layer with a trained parameter, or 0 when a parameter outside the layers from
    there up, the final norm and the output head trains (e.g. the input embedding, also a tied ``lm_head`` trained
    as the shared matrix).  ``trainable``: the healing method's ``Prepared.trainable`` (a callable or names)."""
    from ..architecture import get_decoder_layers, get_final_norm

    pick = trainable if callable(trainable) else (lambda n, _p, _s=set(trainable or ()): n in _s)
    trained = {id(p) for n, p in model.named_parameters() if pick(n, p)}
    layers = get_decoder_layers(model)
    first = next((i for i, layer in enumerate(layers) if any(id(p) in trained for p in layer.parameters())), 0)
    if first == 0:
        return 0
    above = [*layers[first:], get_final_norm(model), model.get_output_embeddings()]
    allowed = {id(p) for m in above if m is not None for p in m.parameters()}
    allowed -= {id(p) for p in model.get_input_embeddings().parameters()}  # a tied head trains the input too
    return first if trained <= allowed else 0


def training_dropout(model: nn.Module) -> str | None:
    """Where ``model`` drops out in training mode (a ``Dropout`` module or a ``*dropout*`` / ``*pdrop*`` rate of its
    config above 0), or None."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    for key, value in sorted(vars(text).items() if text is not None else ()):
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float) and value > 0:
            return f"{key}={value}"
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return f"{name} p={module.p}"
    return None


@torch.no_grad()
def check_prefix(student: nn.Module, teacher: nn.Module, p: int, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Whether the teacher's input to its decoder layer ``p`` is the student's own (the student's layers below ``p``
    are the teacher's, unchanged), on one batch (the first training example); ``used`` says whether the teacher's
    pass keeps it for training to read, ``reason`` why not."""
    from ..capture import LayerHooks

    def layer_input(model: nn.Module) -> torch.Tensor:
        seen: dict[str, torch.Tensor] = {}
        was_training = model.training
        model.eval()
        try:
            dev = model_device(model)
            with LayerHooks(model, on_input=lambda _i, h: seen.__setitem__("h", h), layers=[p]):
                model(**{k: batch[k].to(dev) for k in ("input_ids", "attention_mask", "position_ids") if k in batch},
                      use_cache=False)
        finally:
            model.train(was_training)
        return seen["h"].detach().cpu()

    dropout = training_dropout(student)
    if dropout:
        return {"layers_skipped": p, "used": False,
                "reason": f"the student trains with dropout ({dropout}): its frozen layers do not compute what the "
                          "teacher's pass (without dropout) computed"}
    own, theirs = layer_input(student), layer_input(teacher)
    mask = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones(own.shape[:2], dtype=torch.bool)
    info: dict[str, Any] = {"layers_skipped": p, "bytes_per_token": int(theirs.shape[-1] * theirs.element_size())}
    if own.shape != theirs.shape:
        return {**info, "used": False, "reason": f"the student's input to layer {p} has shape {tuple(own.shape)}, "
                                                 f"the teacher's {tuple(theirs.shape)}"}
    own, theirs = own.float()[mask], theirs.float()[mask]
    diff = float((own - theirs).abs().max())
    info["max_abs_diff"] = diff
    if diff <= 1e-4 * max(1.0, float(own.abs().max())):
        return {**info, "used": True}
    return {**info, "used": False, "reason": f"the student's input to layer {p} differs from the teacher's (max |diff| "
                                             f"{diff:.3g}): its layers below are not the teacher's own"}


def _cache_teacher(teacher: nn.Module, data: HealingData, collator: Any, k: int, workdir: str,
                   config: HealingConfig, hidden_layer: int | None = None) -> tuple[Any, dict[str, Any]]:
    """One no-grad pass of ``teacher`` over the training then the validation examples: their top-``k`` logits in
    shards under ``workdir/kd_topk_cache`` (one folder per process of a distributed run); with ``hidden_layer``,
    also the teacher's input to that decoder layer (the student's frozen prefix)."""
    import weakref

    from ..training.teacher_cache import cache_teacher_in

    cache, info = cache_teacher_in(workdir, teacher, [data.train, data.eval], collator, k, batch_size=config.batch_size,
                                   progress=config.progress, hidden_layer=hidden_layer)
    return cache, {**info, "teacher_ref": weakref.ref(teacher)}


def _collect(ref: Any) -> bool:
    """:func:`release_memory`, then whether the object ``ref`` points to is gone."""
    release_memory()
    return ref() is None


def plan_for(model: nn.Module, model_path: str | os.PathLike | None, base_model: str | None = None) -> StreamlinePlan:
    """The plan saved beside ``model_path`` (a pruned folder), or a fresh one that records only the healing."""
    if model_path is not None and (Path(model_path) / "streamline_plan.json").is_file():
        return StreamlinePlan.load(model_path)
    L = num_layers(model)
    name = base_model or (str(model_path) if model_path is not None else
                          getattr(getattr(model, "config", None), "_name_or_path", "") or "unknown")
    return StreamlinePlan(base_model=name, num_layers_before=L, method="heal", selection=None, versions=versions(),
                          base_config=base_config_record(model))


def save_healed(result: HealingResult, tokenizer: Any, plan: StreamlinePlan, output: str | os.PathLike, *,
                base_model_path: str | os.PathLike | None = None, overwrite: bool = False,
                model_card: bool = True) -> Path:
    """Write a healed model: a plain checkpoint (``partial``, ``distill``, merged adapters) via
    :func:`hf_streamline.pruning.save_pruned`, or an adapter folder that peft's ``AutoPeftModelForCausalLM`` loads
    (``base_model_name_or_path`` = ``base_model_path``; without one, the base is written into ``OUTPUT/base``).
    The healing record is appended to ``plan.healing`` and the model card is written."""
    plan.healing.append({k: v for k, v in result.record.items()})
    plan.versions = plan.versions or versions()
    extra = {"training": {k: result.record.get(k) for k in ("method", "trainable_parameters", "train_tokens",
                                                            "global_step", "learning_rate")}}
    if result.merged:
        return save_pruned(result.model, tokenizer, plan, output, overwrite=overwrite, model_card=model_card,
                           card_extra=extra)
    if result.adapter is None:
        raise StreamlineError("this healing result has no adapter to save; heal with merge=True and save the model")
    if not is_main_process():  # under `accelerate launch` only the main process writes (as save_pruned): one writer,
        wait_for_everyone()    # no race for the output folder; the others wait
        return Path(output)
    out_abs = Path(output).absolute()
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        base = None
        if base_model_path is not None:  # a local folder (made absolute) or a Hub id
            base = str(Path(base_model_path).absolute()) if os.path.isdir(base_model_path) else str(base_model_path)
        if base is None:  # the base lives only in memory: keep a copy beside the adapter
            import copy

            base_model = copy.deepcopy(result.model).unload() if hasattr(result.model, "unload") else result.model
            base_model.save_pretrained(tmp / "base")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / "base")
            base = str(out_abs / "base")
        result.adapter.save(tmp, base_model_name_or_path=base)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        plan.extra.setdefault("adapter", {"base_model_name_or_path": base, "peft_type": "LORA"})
        plan.save(tmp)
        if model_card:
            write_optional_model_card(tmp, plan, extra, name=output_name(output))  # the summary says "adapter"
    wait_for_everyone()
    return Path(output)


def release_memory() -> None:
    """Return the memory of models the caller has already dropped every reference to (between methods of a
    comparison): collect, and empty the CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
