"""``hf-streamline heal``: train a pruned model back (partial layers, LoRA, QLoRA, distillation) and save it.

With ``--remove N`` the model is the dense one: it is pruned in steps of ``--step`` layers (re-scored with
``--metric`` on ``--calibration``) and healed after every step (iterative pruning; one step = one-shot).
"""

from __future__ import annotations

import argparse

from ..training.checkpoints import add_checkpoint_args, checkpoint_plan, keep_checkpoints_on_failure
from .common import (add_base_model_arg, add_model_args, add_output_args, add_ppl_tokens_arg, check_text_args,
                     load_from_args, model_layer_count, model_name, preflight_model)

HELP = "heal a pruned model: partial-layer training, LoRA, QLoRA or distillation"  # the line of `hf-streamline --help` (read without building this parser)


def add_healing_args(p: argparse.ArgumentParser) -> None:
    """Data, method and training options shared by ``heal`` and ``compare-healing``."""
    from ..options import DATA_FORMATS as FORMATS, PROMPT_TEMPLATES as TEMPLATES, parse_last_k

    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, nargs="+", metavar="SOURCE",
                   help="training text: a text file, a .json/.jsonl file (text or Alpaca instruction records), "
                        "dataset:NAME[:CONFIG]:SPLIT[:COLUMN], or a datasets id of Alpaca data (yahma/alpaca-cleaned); "
                        "several sources of one kind are pooled and shuffled")
    d.add_argument("--data-format", choices=FORMATS, default="auto", help="auto (default) | text | alpaca")
    d.add_argument("--template", choices=TEMPLATES, default="auto",
                   help="prompt of instruction data: auto (default: the tokenizer's chat template where it has one, "
                        "else alpaca), alpaca, or chat (the tokenizer's chat template)")
    d.add_argument("--text-column", default="text", help="text field of .jsonl / dataset records (default text)")
    d.add_argument("--seq-len", type=int, default=256, help="tokens per window / cutoff per example (default 256)")
    d.add_argument("--eval-size", type=int, default=None,
                   help="windows / examples held out for validation and best-checkpoint selection "
                        "(default 5%%, at most 64; 0 = none)")
    d.add_argument("--max-examples", type=int, default=None, help="use at most this many training windows / examples")
    m = p.add_argument_group("methods")
    m.add_argument("--last-k", type=parse_last_k, default=3,
                   help="partial / distill: train the last K decoder layers (+ lm_head + final norm; default 3); "
                        "'cut' = every layer above the first removed one (from the folder's streamline_plan.json), "
                        "'cut+N' = those and the N layers below the cut")
    m.add_argument("--tied-policy", choices=["auto", "untie", "train-shared"], default="auto",
                   help="tied embeddings: auto (default) unties lm_head only where the untied model stays no larger "
                        "than its base model, else trains the shared matrix; untie (the input embedding never "
                        "changes, one vocabulary x hidden matrix more); train-shared (changes the input embedding; "
                        "recorded in the plan)")
    m.add_argument("--freeze-lm-head", action="store_true",
                   help="partial / distill: train only the final norm and the last K layers; lm_head (tied or not) "
                        "stays as it is, so the model keeps its size and a step is cheaper")
    m.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    m.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default 32)")
    m.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    m.add_argument("--lora-targets", default=None,
                   help="comma-separated module names that get adapters (e.g. q_proj,v_proj); default: every linear "
                        "layer inside the decoder layers")
    m.add_argument("--qlora-quant-type", choices=["nf4", "fp4"], default="nf4", help="QLoRA 4-bit type (default nf4)")
    m.add_argument("--distill-subset", choices=["partial", "lora"], default="partial",
                   help="distill: what trains (default partial = lm_head + norm + last K layers)")
    m.add_argument("--temperature", type=float, default=1.0, help="distill: KL temperature (default 1)")
    m.add_argument("--kl-weight", type=float, default=1.0, help="distill: weight of the KL term (default 1)")
    m.add_argument("--lm-weight", type=float, default=0.0, help="distill: weight of the LM loss mixed in (default 0)")
    m.add_argument("--kd-top-k", type=int, default=None, metavar="K",
                   help="distill: cache the teacher's top-K logits to disk in one pass before training and free the "
                        "teacher (it is never in memory beside the student while training); default: the teacher "
                        "runs at every step")
    m.add_argument("--no-prefix-cache", action="store_true",
                   help="distill with --kd-top-k: run the frozen layers below the lowest trained one at every step "
                        "instead of reading their output from the teacher's pass (default: read, where they are the "
                        "teacher's own layers)")
    t = p.add_argument_group("training")
    t.add_argument("--learning-rate", type=float, default=None,
                   help="peak learning rate (default: partial/distill 1e-4, lora/qlora 5e-4)")
    t.add_argument("--batch-size", type=int, default=4, help="sequences per micro-batch (default 4)")
    t.add_argument("--grad-accum", type=int, default=1, help="gradient-accumulation steps (default 1)")
    t.add_argument("--epochs", type=float, default=2.0, help="epochs without --max-steps/--budget-tokens (default 2)")
    t.add_argument("--lr-scheduler", default="cosine", help="transformers scheduler name (default cosine)")
    t.add_argument("--warmup-ratio", type=float, default=0.0, help="fraction of steps for warm-up (default 0)")
    t.add_argument("--eval-steps", type=int, default=None, help="validate every N steps (default: 4 times per run)")
    t.add_argument("--no-best-checkpoint", action="store_true",
                   help="keep the last weights instead of the best validation checkpoint")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")


def healing_config_from_args(args: argparse.Namespace):
    from ..healing import HealingConfig

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
        learning_rate=args.learning_rate,
        max_steps=getattr(args, "max_steps", None), budget_tokens=getattr(args, "budget_tokens", None),
        epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr_scheduler=args.lr_scheduler,
        warmup_ratio=args.warmup_ratio, eval_steps=args.eval_steps, best_checkpoint=not args.no_best_checkpoint,
        seed=args.seed, progress=True)


def data_sources(args: argparse.Namespace) -> list[str]:
    """``--data``'s sources as a list (one or several; a caller's Namespace may hold a single string)."""
    return [args.data] if isinstance(args.data, str) else list(args.data)


def data_from_args(args: argparse.Namespace, tokenizer):
    from ..healing import HealingDataConfig
    from ..healing.data import load_pooled_healing_data

    cfg = HealingDataConfig(format=args.data_format, seq_len=args.seq_len, template=args.template,
                            text_column=args.text_column, eval_size=args.eval_size, max_examples=args.max_examples,
                            seed=args.seed)
    return load_pooled_healing_data(tokenizer, cfg, data_sources(args))


def load_teacher(args: argparse.Namespace, method=None):
    """The ``--teacher`` model, loaded only for a method that uses one (distillation) or for ``--self-distill``;
    ``None`` otherwise."""
    uses = method is None or method.needs_teacher or getattr(args, "self_distill", None) is not None
    if not getattr(args, "teacher", None) or not uses:
        return None
    from ..loading import load_model_and_tokenizer

    return load_model_and_tokenizer(args.teacher, dtype=args.dtype, device=args.device,
                                    trust_remote_code=args.trust_remote_code,
                                    **{k: getattr(args, k, None) for k in ("token", "attn_implementation")})[0]


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..plugins import HEALING_METHODS

    p = sub.add_parser(name, help=HELP)
    add_model_args(p)
    add_base_model_arg(p, help="Hub id of the base model the plan applies to, where it was loaded from a local folder: "
                               "--model itself for a dense model, its dense base for a pruned --model; recorded in "
                               "the plan and the model card (base_model)")
    p.add_argument("--teacher", default=None, help="the dense model (needed by --method distill and --self-distill)")
    p.add_argument("--method", default="partial",
                   help=f"{' | '.join(sorted(HEALING_METHODS))}, or a spec such as partial:1, distill:lora (default partial)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    b.add_argument("--budget-tokens", type=int, default=None, help="train on about this many tokens")
    p.add_argument("--merge", action="store_true",
                   help="lora/qlora: merge the adapter into the weights and save a plain checkpoint (default: save "
                        "the adapter folder, which peft's AutoPeftModelForCausalLM loads)")
    add_healing_args(p)
    sd = p.add_argument_group("self-distillation data (any --method; needs --teacher)")
    sd.add_argument("--self-distill", type=int, default=None, metavar="N",
                    help="heal on continuations of N tokens that the --teacher generates (greedy, stopping at EOS) "
                         "from prompts of the training data: text: the first --self-distill-prompt-len tokens of "
                         "each window (the loss on the generated tokens only); instructions: the formatted prompt, "
                         "the response replaced by the teacher's. Validation stays the original data; the cost is "
                         "recorded (self_distill). Default: off")
    sd.add_argument("--self-distill-prompt-len", type=int, default=32, metavar="P",
                    help="text data: prompt tokens taken from each training window (default 32)")
    sd.add_argument("--self-distill-sample", action="store_true",
                    help="sample (seeded by --seed) instead of greedy decoding")
    sd.add_argument("--self-distill-temperature", type=float, default=1.0, metavar="T",
                    help="--self-distill-sample: temperature (default 1)")
    it = p.add_argument_group("iterative pruning (--model is then the dense model)")
    it.add_argument("--remove", type=int, default=None, help="prune this many layers, healing after every --step")
    it.add_argument("--step", type=int, default=None, help="layers removed per step (default: all at once)")
    it.add_argument("--metric", default="block_influence", help="score that chooses the layers (default block_influence)")
    it.add_argument("--calibration", default=None, help="calibration text for the scores (default: the first --data source if text)")
    it.add_argument("--calibration-samples", type=int, default=32, help="calibration sequences (default 32)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-text", default=None, help="text file: perplexity before and after healing")
    add_ppl_tokens_arg(e, help="score at most this many tokens of --eval-text")
    add_checkpoint_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


@keep_checkpoints_on_failure("heal")
def run(args: argparse.Namespace) -> int:
    import os

    from ..errors import StreamlineError
    from ..healing import get_healing_method, heal, plan_for, save_healed
    from ..healing.partial import is_cut, resolve_last_k
    from ..utils import check_output_dir

    check_output_dir(args.output, args.overwrite)  # refuse before any long work
    train_dir, resume = checkpoint_plan(args, iterative=args.remove is not None)
    config = healing_config_from_args(args)
    method = get_healing_method(config)  # a bad --method fails before loading
    if args.merge is False and method.adapter and args.remove is not None:
        args.merge = True  # iterative healing merges after every step
    # everything that needs no weights is checked before the model loads
    from ..validation import check_data_source, text_path

    for source in data_sources(args):
        check_data_source(source, "--data", allow_hub_id=True)
    check_data_source(args.calibration, "--calibration")
    check_text_args(args, "eval_text")
    self_distill = config.self_distill is not None
    if self_distill:
        from ..healing.self_distill import check_self_distill

        check_self_distill(config)
        if not args.teacher and args.remove is None:  # (iterative pruning: --model is the dense model)
            raise StreamlineError("--self-distill needs the dense model as --teacher (it generates the training "
                                  "continuations)")
    if args.remove is not None and is_cut(config.last_k):
        raise StreamlineError(f"--last-k {config.last_k} needs a pruned folder's plan; with iterative pruning "
                              "(--remove) give --last-k a number of layers")
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
    teacher = load_teacher(args, method)
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
                                               metric=args.metric, calibration=calib, teacher=teacher,
                                               base_model=model_name(args), eval_text=text_path(eval_text),
                                               eval_tokens=args.ppl_tokens, eval_seq_len=args.seq_len,
                                               batch_size=args.batch_size, seed=args.seed)
        for s in plan.steps:
            print(f"step {s['step']}: removed {s['removed']} -> {s['layers_after']} layers"
                  + (f"; perplexity {s['perplexity_after_removal']:.3f} -> {s['perplexity_after_healing']:.3f} after healing"
                     if s.get("perplexity_after_removal") is not None else ""))
        out = save_pruned(model, tok, plan, args.output, overwrite=args.overwrite, model_card=True,
                          card_extra={"training": {"method": method.spec(), "steps": len(plan.steps)}})
        print(f"saved a plain {type(model).__name__} checkpoint with {plan.num_layers_after} layers to {out}")
        return 0

    from ..loading import resolve_model_spec

    spec = resolve_model_spec(args.model)
    folder = spec if os.path.isdir(spec) else None
    model_path = folder if args.dtype is None else None  # QLoRA reloads it in 4 bits: only if loaded unchanged
    # where an adapter's base comes from: the folder, a Hub id, or (a .gguf file) a copy saved beside the adapter
    adapter_base = folder or (None if spec.endswith(".gguf") else spec)
    plan = plan_for(model, folder, model_name(args))
    if is_cut(config.last_k):
        spec, config.last_k = config.last_k, resolve_last_k(config.last_k, plan)
        print(f"--last-k {spec}: the last {config.last_k} layers train (the first removed layer was "
              f"{min(plan.removed_layers)} of the {plan.num_layers_before})")
    if config.tied_policy == "auto" and config.base_parameters is None:  # healing never outgrows the base model
        from ..healing.base import estimate_base_parameters

        config.base_parameters = estimate_base_parameters(model, plan.num_layers_before, teacher)
    if args.base_model:  # the Hub id of the base the plan applies to, where it was recorded as a local folder
        plan.base_model = args.base_model
    before = ppl(model)
    if teacher is not None and (config.kd_top_k or not method.needs_teacher):
        # heal gets the only reference (a loader that hands it over once), so it frees the teacher once its top-k
        # logits are cached (or, --self-distill without distillation, once it has generated), before training
        teacher = [teacher].pop
    result = heal(model, tok, data, config, teacher=teacher, model_path=model_path, merge=args.merge or not method.adapter,
                  output_dir=str(train_dir), save_steps=args.save_steps, resume_from_checkpoint=resume)
    after = ppl(result.model)
    if before is not None:
        result.record["perplexity"] = {"text": eval_text, "before": before, "after": after}
        plan.evaluation.setdefault("healing_perplexity", []).append(result.record["perplexity"])
        print(f"perplexity on {eval_text}: {before:.3f} -> {after:.3f}")
    rec = result.record
    print(f"{rec['method']}: trained {rec['trainable_parameters']:,} parameters "
          f"({100 * rec['trainable_fraction']:.2f}%) on {rec['train_tokens']:,} tokens in {rec['global_step']} steps, "
          f"{rec['wall_time_s']:.1f} s")
    out = save_healed(result, tok, plan, args.output, overwrite=args.overwrite, base_model_path=adapter_base)
    kind = "a plain checkpoint" if result.merged else "a LoRA adapter (load with peft's AutoPeftModelForCausalLM)"
    print(f"saved {kind} to {out}")
    return 0
