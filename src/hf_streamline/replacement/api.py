"""LLM-Streamline: choose a redundant block, replace it by one trained module, save it loadable everywhere.

``streamline`` is the pipeline the CLI runs; ``choose_block``, ``replace_block``, ``install_replacement`` and
``train_replacement`` are its steps.  Layer indices given to the plan refer to the original model.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..architecture import (check_causal_lm, find_decoder_layers_path, get_decoder_layers, keep_only_layers,
                            layer_parameter_counts, num_layers, skip_layers)
from ..errors import StreamlineError
from ..modeling import StreamlineConfig, StreamlineForCausalLM
from ..operations import ReplaceOp
from ..plan import StreamlinePlan, base_config_record, block_positions, register_operation
from ..utils import param_names_of, process_rank, versions
from .activations import (ACTIVATION_MODES, BlockReplacementTask, TokenWindows, cache_block_activations, capture_block,
                          token_windows)
from .base import ReplacementOptions, get_kind


def validate_block(num_layers_: int, start: int | None, n: int) -> None:
    if n < 1:
        raise StreamlineError("a block has at least one layer", argument="block_size", value=n)
    if n > num_layers_:
        raise StreamlineError(f"larger than the model, which has {num_layers_} decoder layers", argument="block_size",
                              value=n)
    if n == num_layers_:
        raise StreamlineError(f"the model has {num_layers_} layers and at least one original layer must stay; choose "
                              "a smaller block", argument="block_size", value=n)
    if start is not None and not (0 <= start and start + n <= num_layers_):
        raise StreamlineError(f"with block_size {n} the block runs past the last layer ({num_layers_ - 1}); it must "
                              f"fit in layers 0..{num_layers_ - 1}", argument="block_start", value=start)


def choose_block(model: nn.Module, n: int, calibration: Any, batch_size: int = 8, protect_first: int = 0,
                 protect_last: int = 0, progress: bool = True) -> tuple[int, Any]:
    """The block of ``n`` consecutive layers whose output is most similar to its input (``block_cosine``)."""
    from ..scores import compute_scores
    from ..selection import Target, select_block

    validate_block(num_layers(model), None, n)
    if calibration is None:
        raise StreamlineError("choosing the block needs calibration data: pass it, or name the block with "
                              "block_start", argument="calibration")
    scores = compute_scores(model, ["block_cosine"], calibration, batch_size=batch_size, block_sizes=[n],
                            progress=progress)["block_cosine"]
    total = sum(p.numel() for p in model.parameters())
    block = select_block(scores, Target(layers=n), layer_parameter_counts(model), total, protect_first, protect_last)
    return block[0], scores


def _unwrap(model: nn.Module) -> tuple[nn.Module, list[dict]]:
    if isinstance(model, StreamlineForCausalLM):
        return model.model, [dict(r) for r in model.config.replacements]
    return model, []


def install_replacement(model: nn.Module, start: int, n: int, kind: str, module: nn.Module | None = None,
                        replaces: Sequence[int] | None = None) -> nn.Module:
    """Put ``module`` in place of layers ``start..start+n-1`` (current indices) of ``model``; return the model.

    ``none`` and ``decoder_layer`` leave a plain checkpoint of the base architecture (in place); ``mlp`` returns a
    ``StreamlineForCausalLM`` around the pruned base model.
    """
    spec = get_kind(kind)
    inner, records = _unwrap(model)
    L = num_layers(inner)
    validate_block(L, start, n)
    block = set(range(start, start + n))
    clash = sorted(int(r["slot"]) for r in records if int(r["slot"]) in block)
    if clash:
        raise StreamlineError(f"the block {start}..{start + n - 1} contains the earlier replacement in slot {clash[0]}")
    if spec.trainable and module is None:
        raise StreamlineError(f"replacement kind {kind!r} needs a module to install")
    replaces = list(replaces) if replaces is not None else list(range(start, start + n))
    if kind == "none":
        kept = [i for i in range(L) if i not in block]
    else:
        kept = [i for i in range(L) if i not in block or i == start]
        layers = get_decoder_layers(inner)
        ref = next(layers[start].parameters(), None)
        if ref is not None:
            module.to(device=ref.device)
        layers[start] = module
    keep_only_layers(inner, kept)
    new_index = {old: new for new, old in enumerate(kept)}
    records = [dict(r, slot=new_index[int(r["slot"])]) for r in records]
    record = spec.record(module, new_index[start], replaces) if kind != "none" else None
    if record is not None:
        records.append(record)
    if not records:
        return inner
    name = getattr(model.config, "base_model", None) or getattr(inner.config, "_name_or_path", "") or None
    config = StreamlineConfig(text_config=inner.config, replacements=sorted(records, key=lambda r: r["slot"]),
                              layers_path=find_decoder_layers_path(inner), base_model=name)
    wrapper = StreamlineForCausalLM(config, base_model=inner)
    wrapper.generation_config = copy.deepcopy(inner.generation_config)
    wrapper.eval() if not inner.training else wrapper.train()
    return wrapper


def build_replacement(model: nn.Module, start: int, n: int, kind: str,
                      options: ReplacementOptions | None = None) -> nn.Module | None:
    """The untrained replacement module of ``kind`` for block ``start..start+n-1`` (built from the dense model)."""
    from ..offload import onload

    spec = get_kind(kind)
    inner, _ = _unwrap(model)
    validate_block(num_layers(inner), start, n)
    for layer in list(get_decoder_layers(inner))[start:start + n]:  # --sequential: built from the block's weights
        onload(layer)
    return spec.build(inner, start, n, options or ReplacementOptions())


def replace_block(model: nn.Module, start: int, n: int, kind: str = "mlp", options: ReplacementOptions | None = None,
                  replaces: Sequence[int] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Replace block ``start..start+n-1`` by an *untrained* module of ``kind``; return ``(model, plan operation)``."""
    options = options or ReplacementOptions()
    module = build_replacement(model, start, n, kind, options)
    replaces = list(replaces) if replaces is not None else list(range(start, start + n))
    new = install_replacement(model, start, n, kind, module, replaces)
    op = {"type": "replace", "kind": kind, "layers": replaces, "options": options.to_dict()}
    return new, op


@register_operation("replace")
def _apply_replace(model: nn.Module, op: ReplaceOp, state: dict, **_: Any) -> nn.Module:
    """Rebuild a replacement's structure (untrained weights; the trained ones are in the saved folder)."""
    current: list[int] = state["current"]
    orig = [int(i) for i in op["layers"]]
    positions = block_positions(state, orig, "replaces")
    opts = ReplacementOptions(**(op.get("options") or {}))
    model, _ = replace_block(model, positions[0], len(positions), op["kind"], opts, replaces=orig)
    gone = set(orig[1:]) if op.replaces else set(orig)  # a module takes the first slot
    state["current"] = [o for o in current if o not in gone]
    return model


def train_replacement(model: nn.Module, start: int, n: int, kind: str, module: nn.Module, train: TokenWindows,
                      args: Any, *, eval_data: TokenWindows | None = None, activations: str = "stream",
                      cache_dir: str | os.PathLike | None = None, shard_size: int = 64, cache_dtype: Any = None,
                      resume_from_checkpoint: str | bool | None = None, progress: bool = True,
                      tokenizer: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``module`` (the replacement of block ``start..start+n-1`` of the dense ``model``).

    ``args.objective == "mse"``: on the block's input/output (``activations``: ``stream`` or ``cache``); the model is
    not changed and the trained module is returned.  ``"lm"``: the module is installed first and trained in place with
    the pruned model's next-token loss (+ KL to the dense model when ``args.kl_weight > 0``: a copy of it running
    beside the student, or with ``args.kd_top_k`` = K its top-K logits and its input to the block, cached to disk in
    one pass before the module is installed, so no copy is made and the frozen layers below the block never run in
    training); the returned model is the pruned one.  Returns ``(model, record)``.
    """
    from ..training import StreamlineTrainer

    spec = get_kind(kind)
    if activations not in ACTIVATION_MODES:
        raise StreamlineError(f"unknown; use one of {list(ACTIVATION_MODES)}", argument="activations",
                              value=activations)
    bs = int(args.per_device_train_batch_size)
    if len(train) < bs:
        raise StreamlineError(
            f"training text too short: it gives {len(train)} windows of {train.input_ids.shape[1]} tokens, fewer than one "
            f"batch of {bs}; give more text, or a smaller args.per_device_train_batch_size / shorter windows",
            argument="train")
    objective = getattr(args, "objective", "mse")
    record: dict[str, Any] = {"objective": objective, "activations": activations, "train_windows": len(train),
                              "seq_len": int(train.input_ids.shape[1]), "source": train.source}
    if objective == "mse":
        task = BlockReplacementTask(model, module, start, n, spec.needs_layer_context)
        train_ds, eval_ds, cached = train, eval_data, []
        if activations == "cache":
            rank, world = process_rank()
            if cache_dir and world > 1:  # one shard folder per process of a distributed run
                cache_dir = Path(cache_dir) / f"rank{rank}"
            train_ds = cache_block_activations(model, start, n, train, Path(cache_dir) / "train" if cache_dir else None,
                                               batch_size=bs, shard_size=shard_size, dtype=cache_dtype, progress=progress)
            cached.append(train_ds)
            if eval_data is not None:
                eval_ds = cache_block_activations(model, start, n, eval_data,
                                                  Path(cache_dir) / "eval" if cache_dir else None, batch_size=bs,
                                                  shard_size=shard_size, dtype=cache_dtype, progress=progress)
                cached.append(eval_ds)
        trainer = StreamlineTrainer(task, args, objective="mse", train_dataset=train_ds, eval_dataset=eval_ds)
        try:
            result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
            metrics = dict(result.metrics)
            if eval_ds is not None:
                metrics.update(trainer.evaluate())
        finally:
            for ds in cached:
                ds.delete()
        task.replacement.requires_grad_(False)
        record.update({"global_step": trainer.state.global_step, "metrics": metrics,
                       "log_history": trainer.state.log_history})
        return model, record
    # lm: train in place on the pruned model
    teacher: Any = None
    kd_top_k = getattr(args, "kd_top_k", None)
    distill = float(getattr(args, "kl_weight", 0.0) or 0.0) > 0
    check_kd_top_k(kd_top_k, objective, getattr(args, "kl_weight", 0.0))
    collator, work, cache = None, None, None
    if distill:
        record.update({"kl_weight": float(args.kl_weight), "kl_temperature": float(getattr(args, "kl_temperature", 1.0)),
                       "lm_weight": float(getattr(args, "lm_weight", 1.0))})
    try:
        if distill and kd_top_k is not None:  # the model is still dense here: it is its own teacher, cached once
            train, eval_data, cache, collator, work = _cache_dense(model, start, train, eval_data, args, int(kd_top_k),
                                                                   cache_dir, progress, record)
            teacher = cache
        elif distill:
            teacher = copy.deepcopy(model)
        pruned = install_replacement(model, start, n, kind, module)
        names = param_names_of(pruned, [module])
        trainable = [f"^{re.escape(nm)}$" for nm in names]
        trainer = StreamlineTrainer(pruned, args, objective="lm", teacher=teacher, trainable=trainable,
                                    train_dataset=train, eval_dataset=eval_data, data_collator=collator)
        pruned.train()
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        metrics = dict(result.metrics)
        if eval_data is not None:
            metrics.update(trainer.evaluate())
    finally:
        if cache is not None:
            cache.delete()  # the shards never outlive the run
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    pruned.eval()
    pruned.requires_grad_(False)
    record.update({"global_step": trainer.state.global_step, "metrics": metrics, "log_history": trainer.state.log_history})
    return pruned, record


def check_kd_top_k(k: int | None, objective: str, kl_weight: float | None) -> None:
    """Refuse a ``kd_top_k`` that nothing would use (it caches the dense logits of the ``lm`` objective's KL term)."""
    if k is None:
        return
    if int(k) < 1:
        raise StreamlineError("must be >= 1 (the number of the dense model's largest logits kept per token)",
                              argument="kd_top_k", value=k)
    if objective != "lm" or not float(kl_weight or 0.0) > 0:
        raise StreamlineError("caches the dense model's logits for the KL term of the lm objective: give it with "
                              "{objective} lm and {kl_weight} > 0, or leave it unset", argument="kd_top_k", value=k,
                              mentions=("objective", "kl_weight"))


def _cache_dense(model: nn.Module, start: int, train: TokenWindows, eval_data: TokenWindows | None, args: Any, k: int,
                 cache_dir: str | os.PathLike | None, progress: bool, record: dict[str, Any]) -> tuple[Any, ...]:
    """One no-grad pass of the dense ``model`` over the windows training will read (a seeded subset when the steps
    cover less than one epoch) and the evaluation windows: its top-``k`` logits, and its input to layer ``start``
    (the replacement's input: the layers below are frozen and unchanged, so training skips them) unless the model
    drops out in training.  Returns ``(train, eval_data, cache, collator, work folder to remove or None)``, the
    datasets indexed for the cache; ``record`` gains ``kd_cache``."""
    from transformers import default_data_collator

    from ..healing.api import training_dropout
    from ..training.teacher_cache import IndexedExamples, cache_teacher_in, indexed_collator
    from ..utils import make_work_dir

    steps = int(getattr(args, "max_steps", -1) or -1)
    if steps > 0:
        seen = steps * int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * process_rank()[1]
        train = train.take(seen, int(args.seed))
    dropout = training_dropout(model) if start > 0 else None
    hidden_layer = start if start > 0 and not dropout else None
    owned = Path(make_work_dir("replace_kd")) if cache_dir is None else None
    try:
        cache, info = cache_teacher_in(owned or cache_dir, model, [train, eval_data], default_data_collator, k,
                                       batch_size=int(args.per_device_train_batch_size), progress=progress,
                                       hidden_layer=hidden_layer)
    except BaseException:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    record["kd_cache"] = {**info, "prefix": {"layers_skipped": start, "used": hidden_layer is not None,
                                             **({"reason": f"the model trains with dropout ({dropout})"} if dropout else {})}}
    record["train_windows"] = len(train)
    indexed_eval = IndexedExamples(eval_data, len(train)) if eval_data is not None else None
    return IndexedExamples(train), indexed_eval, cache, indexed_collator(default_data_collator), owned


def streamline(model: nn.Module, tokenizer: Any, *, block_size: int, replacement: str = "mlp",
               calibration: Any = None, block_start: int | None = None, train_data: Any = None,
               training_args: Any = None, options: ReplacementOptions | None = None, activations: str = "stream",
               train_seq_len: int = 256, max_train_windows: int | None = None, eval_windows: int = 0,
               cache_dir: str | os.PathLike | None = None, shard_size: int = 64, batch_size: int = 8,
               base_model: str | None = None, resume_from_checkpoint: str | bool | None = None,
               progress: bool = True, measure: Callable[[nn.Module], float | None] | None = None,
               measured_on: str | None = None) -> tuple[nn.Module, StreamlinePlan]:
    """LLM-Streamline on ``model``: choose (or take) a block of ``block_size`` layers, build a ``replacement``,
    train it (``training_args.objective``: mse | lm) and put it in place.  Returns ``(model, plan)``.

    ``measure`` (e.g. a perplexity on ``measured_on``) is taken of the dense model, of the model with the block
    skipped (plain removal; nothing is copied) and of the result, into ``plan.evaluation["perplexity"]``."""
    check_causal_lm(model)
    spec = get_kind(replacement)  # fail on a bad kind before any work
    measured: dict[str, Any] = {}
    L = num_layers(model)
    validate_block(L, block_start, block_size)
    options = options or ReplacementOptions()
    if activations not in ACTIVATION_MODES:
        raise StreamlineError(f"unknown; use one of {list(ACTIVATION_MODES)}", argument="activations",
                              value=activations)
    train_windows = eval_set = None
    max_steps = int(getattr(training_args, "max_steps", -1) or -1) if training_args is not None else -1
    if spec.trainable and max_steps != 0:
        if train_data is None:
            raise StreamlineError(f"the {replacement!r} replacement is trained: pass training text (or "
                                  "training_args.max_steps=0)", argument="train_data")
        if training_args is None:
            raise StreamlineError("pass training_args=StreamlineTrainingArguments(...) to train the replacement")
        if train_seq_len < 2:
            raise StreamlineError("must be >= 2", argument="train_seq_len", value=train_seq_len)
        windows = token_windows(tokenizer, train_data, train_seq_len, max_windows=max_train_windows, what="train_data")
        train_windows, eval_set = windows.split(eval_windows) if eval_windows and len(windows) > eval_windows else (windows, None)
        bs = int(training_args.per_device_train_batch_size)
        if len(train_windows) < bs:
            raise StreamlineError(
                f"training text too short: {train_data!r} gives {len(train_windows)} training windows of {train_seq_len} "
                f"tokens, fewer than one batch of {bs}; give more text, or a smaller "
                "training_args.per_device_train_batch_size / train_seq_len", argument="train_data")
    name = base_model or getattr(model.config, "_name_or_path", "") or "unknown"
    plan = StreamlinePlan(base_model=name, num_layers_before=L, method="replace",
                          metric="block_cosine" if block_start is None else None,
                          selection="block" if block_start is None else "user",
                          calibration=calibration.recipe() if calibration is not None else None, versions=versions(),
                          base_config=base_config_record(model))
    if block_start is None:
        block_start, scores = choose_block(model, block_size, calibration, batch_size=batch_size, progress=progress)
        plan.scores["block_cosine"] = scores.to_dict()
    start, n = int(block_start), int(block_size)
    if measure is not None:
        measured = {"text": measured_on, "dense": measure(model)}
        with skip_layers(model, range(start, start + n)):
            measured["removed"] = measure(model)
    module = build_replacement(model, start, n, replacement, options)
    if module is not None:  # what the model's loop expects back from a decoder layer
        probe = capture_block(model, start, n, torch.ones((1, 2), dtype=torch.long), torch.ones((1, 2), dtype=torch.long))
        if hasattr(module, "returns"):
            module.returns = probe["returns"]
            if hasattr(module, "streamline_record"):
                module.streamline_record["returns"] = probe["returns"]
    healing: dict[str, Any] = {"type": "replacement_training", "kind": replacement}
    if module is not None and train_windows is not None:
        model, rec = train_replacement(model, start, n, replacement, module, train_windows, training_args,
                                       eval_data=eval_set, activations=activations, cache_dir=cache_dir,
                                       shard_size=shard_size, resume_from_checkpoint=resume_from_checkpoint,
                                       progress=progress)
        healing.update({k: v for k, v in rec.items() if k != "log_history"})
        healing["loss_curve"] = [{"step": e.get("step"), "loss": e.get("loss"), "eval_loss": e.get("eval_loss")}
                                 for e in rec.get("log_history", []) if "loss" in e or "eval_loss" in e]
        if rec["objective"] == "lm":  # already installed
            plan.operations.append(ReplaceOp(layers=list(range(start, start + n)), kind=replacement,
                                             options=options.to_dict(), trained=True))
            plan.healing.append(healing)
            plan.extra["replacement"] = {"start": start, "block_size": n, "kind": replacement}
            return model, _measured(plan, model, measure, measured)
    model = install_replacement(model, start, n, replacement, module)
    plan.operations.append(ReplaceOp(layers=list(range(start, start + n)), kind=replacement, options=options.to_dict(),
                                     trained=module is not None and train_windows is not None))
    if module is not None:
        plan.healing.append(healing)
    plan.extra["replacement"] = {"start": start, "block_size": n, "kind": replacement}
    return model, _measured(plan, model, measure, measured)


def _measured(plan: StreamlinePlan, model: nn.Module, measure: Any, measured: dict[str, Any]) -> StreamlinePlan:
    if measure is not None:
        plan.evaluation["perplexity"] = {**measured, "replaced": measure(model)}
    return plan


def save_replaced(model: nn.Module, tokenizer: Any, plan: StreamlinePlan, output: str | os.PathLike,
                  overwrite: bool = False, model_card: bool = True) -> Path:
    """Write the model atomically: a plain checkpoint (``none``, ``decoder_layer``) or a ``StreamlineConfig`` folder
    with remote code (``mlp``), plus tokenizer, ``streamline_plan.json`` and (where available) a model card."""
    from ..pruning import save_pruned

    return save_pruned(model, tokenizer, plan, output, overwrite=overwrite, model_card=model_card)
