"""The ``heal`` workflow (``hf-streamline heal``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.heal.run(arguments)``). Train a pruned model back (partial layers, LoRA, QLoRA, distillation) and save it.

With ``--remove N`` the model is the dense one: it is pruned in steps of ``--step`` layers (re-scored with
``--metric`` on ``--calibration``) and healed after every step (iterative pruning; one step = one-shot).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from ..errors import mentioning
from ..training.checkpoints import checkpoint_plan, keep_checkpoints_on_failure
from .common import Say, note, check_text_args, load_from_args, model_layer_count, model_name, preflight_model
if TYPE_CHECKING:
    from ..arguments.compare_healing import CompareHealingArguments
    from ..arguments.heal import HealArguments


def healing_config_from_args(args: HealArguments | CompareHealingArguments):
    from ..healing import HealingConfig
    from ..options import parse_training_arg

    targets = [x.strip() for x in args.lora_targets.split(",") if x.strip()] if args.lora_targets else None
    return HealingConfig(
        method=getattr(args, "method", "partial"), last_k=args.last_k, tied_policy=args.tied_policy,
        freeze_lm_head=getattr(args, "freeze_lm_head", False),
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, lora_targets=targets,
        qlora_quant_type=args.qlora_quant_type, distill_subset=args.distill_subset, kl_temperature=args.temperature,
        kl_weight=args.kl_weight, lm_weight=args.lm_weight, kd_top_k=getattr(args, "kd_top_k", None),
        prefix_cache=not getattr(args, "no_prefix_cache", False),
        self_distill=getattr(args, "self_distill", None),
        self_distill_prompt_len=getattr(args, "self_distill_prompt_len", 32),
        self_distill_sample=getattr(args, "self_distill_sample", False),
        self_distill_temperature=getattr(args, "self_distill_temperature", 1.0),
        self_distill_batch_size=getattr(args, "self_distill_batch_size", 32),
        learning_rate=args.learning_rate,
        max_steps=getattr(args, "max_steps", None), budget_tokens=getattr(args, "budget_tokens", None),
        epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr_scheduler=args.lr_scheduler,
        warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, eval_steps=args.eval_steps, best_checkpoint=not args.no_best_checkpoint,
        seed=args.seed, progress=True,
        training_args=dict(parse_training_arg(item) for item in getattr(args, "training_args", None) or []))


def data_sources(args: HealArguments | CompareHealingArguments) -> list[str]:
    """``--data``'s sources as a list (one or several; a caller's arguments may hold a single string)."""
    return [args.data] if isinstance(args.data, str) else list(args.data)


def data_from_args(args: HealArguments | CompareHealingArguments, tokenizer):
    from ..healing import HealingDataConfig
    from ..healing.data import load_pooled_healing_data

    cfg = HealingDataConfig(format=args.data_format, seq_len=args.seq_len, template=args.template,
                            text_column=args.text_column, eval_size=args.eval_size, max_examples=args.max_examples,
                            seed=args.seed)
    return load_pooled_healing_data(tokenizer, cfg, data_sources(args))


def load_teacher(args: HealArguments | CompareHealingArguments, method=None):
    """The ``--teacher`` model, loaded only for a method that uses one (distillation) or for ``--self-distill``;
    ``None`` otherwise."""
    uses = method is None or method.needs_teacher or getattr(args, "self_distill", None) is not None
    if not getattr(args, "teacher", None) or not uses:
        return None
    from ..loading import load_model_and_tokenizer

    return load_model_and_tokenizer(args.teacher, dtype=args.dtype, device=args.device,
                                    trust_remote_code=args.trust_remote_code,
                                    **{k: getattr(args, k, None) for k in ("token", "attn_implementation")})[0]


@keep_checkpoints_on_failure("heal")
def run(args: HealArguments, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
    from ..errors import StreamlineError
    from ..healing import get_healing_method, plan_for, save_healed
    from ..healing.partial import is_cut
    from ..utils import check_output_dir

    check_output_dir(args.output, args.overwrite)  # refuse before any long work
    train_dir, resume = checkpoint_plan(args, iterative=args.remove is not None)
    config = healing_config_from_args(args)
    method = get_healing_method(config)  # a bad --method fails before loading
    from ..healing.api import check_training_args

    check_training_args(config.training_args)  # a field TrainingArguments does not have fails before loading
    if args.merge is False and method.adapter and args.remove is not None:
        args.merge = True  # iterative healing merges after every step
    # everything that needs no weights is checked before the model loads
    from ..validation import check_data_source, text_path

    for source in data_sources(args):
        with mentioning("data"):
            check_data_source(source, "{data}", allow_hub_id=True)
    with mentioning("calibration"):
        check_data_source(args.calibration, "{calibration}")
    check_text_args(args, "eval_text")
    self_distill = config.self_distill is not None
    if self_distill:
        from ..healing.self_distill import check_self_distill

        check_self_distill(config)
        if not args.teacher and args.remove is None:  # (iterative pruning: --model is the dense model)
            raise StreamlineError("needs the dense model as {teacher} (it generates the training "
                                  "continuations)", argument="self_distill", value=args.self_distill,
                                  mentions=("teacher",))
    if args.remove is not None and is_cut(config.last_k):
        raise StreamlineError("needs a pruned folder's plan; with iterative pruning ({remove}) give a number of "
                              "layers", argument="last_k", value=config.last_k, mentions=("remove",))
    from .common import refuse_sequential

    refuse_sequential(args, "trains the model")
    L = model_layer_count(preflight_model(args))
    if args.teacher and (method.needs_teacher or self_distill):  # (a method without one never loads it)
        preflight_model(args, "teacher")
    if args.remove is not None:
        from ..scores import get_scorer
        from ..selection import check_count

        get_scorer(args.metric)
        if L is not None:
            check_count(args.remove, L)
    model, tok = load_from_args(args)
    data = data_from_args(args, tok)
    eval_text = args.eval_text

    def ppl(m) -> float | None:
        if not eval_text:
            return None
        from ..perplexity import evaluate_perplexity

        return evaluate_perplexity(m, tok, text_path(eval_text), seq_len=args.seq_len, max_tokens=args.ppl_tokens,
                                   batch_size=args.batch_size)

    if args.remove is not None:
        from ..calibration import CalibrationConfig, build_calibration
        from ..healing import iterative_prune_and_heal
        from ..pruning import save_pruned

        calib_source = args.calibration or (data_sources(args)[0] if data.kind == "text" else None)
        calib = None
        if calib_source is not None:
            calib = build_calibration(tok, calib_source, CalibrationConfig(source=calib_source,
                                                                           n_samples=args.calibration_samples,
                                                                           seq_len=args.seq_len, seed=args.seed))
        model, plan = iterative_prune_and_heal(model, tok, data, config, remove=args.remove, step=args.step,
                                               metric=args.metric, calibration=calib,
                                               teacher=load_teacher(args, method),
                                               base_model=model_name(args), eval_text=text_path(eval_text),
                                               eval_tokens=args.ppl_tokens, eval_seq_len=args.seq_len,
                                               batch_size=args.batch_size, seed=args.seed)
        for s in plan.steps:
            say(f"step {s['step']}: removed {s['removed']} -> {s['layers_after']} layers"
                  + (f"; perplexity {s['perplexity_after_removal']:.3f} -> {s['perplexity_after_healing']:.3f} after healing"
                     if s.get("perplexity_after_removal") is not None else ""))
        out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite, model_card=True,
                          card_extra={"training": {"method": method.spec(), "steps": len(plan.steps)}})
        say(f"saved a plain {type(model).__name__} checkpoint with {plan.num_layers_after} layers to {out}")
        return 0

    from ..healing.pruned import heal_pruned, healing_sources
    from ..loading import resolve_model_spec

    sources = healing_sources(resolve_model_spec(args.model), args.dtype)
    plan = plan_for(model, sources.folder, model_name(args))
    if args.base_model:  # the Hub id of the base the plan applies to, where it was recorded as a local folder
        plan.base_model = args.base_model
    before = ppl(model)
    result = heal_pruned(model, tok, data, config, plan, teacher=lambda: load_teacher(args, method),
                         model_path=sources.model_path, merge=args.merge, output_dir=str(train_dir),
                         save_steps=args.save_steps, resume_from_checkpoint=resume)
    cut = result.record.get("last_k_cut")
    if cut:
        say(f"--last-k {cut['spec']}: the last {cut['layers']} layers trained (the first removed layer was "
              f"{min(plan.removed_layers)} of the {plan.num_layers_before})")
    after = ppl(result.model)
    if before is not None:
        result.record["perplexity"] = {"text": eval_text, "before": before, "after": after}
        plan.evaluation.setdefault("healing_perplexity", []).append(result.record["perplexity"])
        say(f"perplexity on {eval_text}: {before:.3f} -> {after:.3f}")
    rec = result.record
    say(f"{rec['method']}: trained {rec['trainable_parameters']:,} parameters "
          f"({100 * rec['trainable_fraction']:.2f}%) on {rec['train_tokens']:,} tokens in {rec['global_step']} steps, "
          f"{rec['wall_time_s']:.1f} s")
    out = save_healed(result, tok, plan, args.output, overwrite=args.overwrite, base_model_path=sources.adapter_base)
    kind = "a plain checkpoint" if result.merged else "a LoRA adapter (load with peft's AutoPeftModelForCausalLM)"
    say(f"saved {kind} to {out}")
    return 0
