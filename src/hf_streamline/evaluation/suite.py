"""One call that evaluates several models the same way and builds the report dict (``report.py`` writes it).

``evaluate_models({"dense": DIR, "pruned": DIR2}, baseline="dense", config=EvaluationConfig(tasks=[...], ppl=[...]))``
loads the models, measures perplexity on every text, scores every task on the *same* seeded items for every model,
compares each model with the baseline (stability, same-prediction rate, KL and top-1 agreement on text), and times
prefill / decode interleaved.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StreamlineError
from ..log import get_logger
from .multiple_choice import TaskResult, evaluate_tasks
from .report import pair_key
from .tasks import resolve_tasks

logger = get_logger(__name__)


@dataclass
class EvaluationConfig:
    """What to measure and how; stored in ``report.json`` under ``settings``."""

    tasks: list[str] = field(default_factory=list, metadata={"help": "task names, .jsonl files, NAME=FILE or task configs."})
    ppl: list[str] = field(default_factory=list, metadata={"help": "text files (or NAME=FILE) for perplexity."})
    limit: int | float | None = field(default=None, metadata={"help": "items per task: the first N, or a fraction below 1 (as lm-eval)."})
    sample_seed: int | None = field(default=None, metadata={"help": "with --limit: a seeded random sample instead of the first items."})
    batch_size: int = field(default=8, metadata={"help": "questions (or rows) per forward pass."})
    prefix_reuse: Any = field(default="auto", metadata={"help": "run shared prefixes once: True, False or 'auto'."})
    task_dir: str | None = field(default=None, metadata={"help": "folder of <task>.jsonl files for registered task names."})
    include_path: str | None = field(default=None, metadata={"help": "folder of lm-eval task YAMLs (e.g. with a local dataset_path)."})
    ppl_seq_len: int | None = field(default=None, metadata={"help": "perplexity window in tokens (default: min(2048, the model's context), as the pruning papers)."})
    ppl_stride: int | None = field(default=None, metadata={"help": "perplexity window start every N tokens (default: the window, non-overlapping)."})
    ppl_max_tokens: int | None = field(default=None, metadata={"help": "score at most this many tokens of each text."})
    agreement_text: str | None = field(default=None, metadata={"help": "text for KL / top-1 agreement (default: first --ppl)."})
    agreement_tokens: int = field(default=8192, metadata={"help": "tokens of the agreement text used."})
    speed: bool = field(default=True, metadata={"help": "measure prefill / decode speed."})
    speed_prompt_len: int = field(default=128, metadata={"help": "prompt tokens for the prefill timing."})
    speed_new_tokens: int = field(default=32, metadata={"help": "decoded tokens for the decode timing."})
    speed_repeats: int = field(default=5, metadata={"help": "interleaved timing repeats (median)."})
    generate: int = field(default=16, metadata={"help": "prompts for the greedy-generation comparison with the baseline (0: off)."})
    generate_tokens: int = field(default=32, metadata={"help": "tokens each model generates per prompt."})
    generate_prompt_tokens: int = field(default=32, metadata={"help": "tokens of each prompt (windows of the agreement text)."})
    lm_eval: bool = field(default=False, metadata={"help": "also run lm-eval-harness on the same items and compare."})
    progress: bool = field(default=True, metadata={"help": "progress bars."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvaluationResult:
    report: dict[str, Any]
    task_results: dict[str, dict[str, TaskResult]]  # label -> task -> result

    def samples(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        return {label: {t: r.samples() for t, r in per.items()} for label, per in self.task_results.items()}


def text_name(spec: str) -> tuple[str, str]:
    """``NAME=FILE`` -> (NAME, FILE); ``path/ptb.test.txt`` -> ("ptb.test", path)."""
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
        return name, path
    base = Path(spec).name
    return (base.rsplit(".", 1)[0] if "." in base else base), spec


def _log(msg: str, on: bool) -> None:
    if on:
        logger.info(msg)


def loading_mode(model: Any) -> str | None:
    """How a model was loaded when that changes its speed: layers read from disk at each forward, quantized weights,
    or spread over several devices; ``None`` for a model held whole on one device."""
    from ..offload import is_offloaded

    if is_offloaded(model):
        return "layers read from disk at each forward (--sequential / offload)"
    quant = getattr(model, "quantization_method", None) or (getattr(model, "hf_quantizer", None) and "quantized")
    if quant:
        return f"quantized weights ({getattr(quant, 'value', quant)})"
    devices = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if len(devices) > 1:
        return f"spread over {', '.join(sorted(devices))}"
    return None


def _model_info(label: str, path: str, model: Any) -> dict[str, Any]:
    from ..architecture import num_layers
    from .speed import parameter_counts

    info: dict[str, Any] = {"path": path, "num_layers": num_layers(model), **parameter_counts(model),
                            "class": type(model).__name__}
    placement = loading_mode(model)
    if placement:
        info["loading"] = placement
    plan_file = Path(path) / "streamline_plan.json" if path and os.path.isdir(path) else None
    if plan_file is not None and plan_file.is_file():
        from ..plan import StreamlinePlan

        plan = StreamlinePlan.load(plan_file)
        info["num_layers_before"] = plan.num_layers_before
        info["removed_layers"] = list(plan.removed_layers)
        info["fraction_removed"] = len(plan.removed_layers) / plan.num_layers_before if plan.num_layers_before else None
        info["method"] = plan.method
    return info


def evaluate_models(models: dict[str, Any], baseline: str | None = None, config: EvaluationConfig | None = None,
                    *, dtype: Any = None, device: str | None = None, trust_remote_code: bool = False,
                    load_kwargs: dict[str, Any] | None = None, **overrides: Any) -> EvaluationResult:
    """Evaluate every model of ``models`` (``label -> folder`` or ``label -> (model, tokenizer)``).

    ``load_kwargs``: more :func:`~hf_streamline.loading.load_model_and_tokenizer` arguments for the models given as
    folders (``device_map``, ``sequential``, ``quantize``, ``revision`` ...).

    ``baseline`` names the dense model the others are compared with (stability, agreement, relative accuracy, speed).
    """
    from ..loading import load_model_and_tokenizer
    from ..perplexity import perplexity_details
    from ..utils import versions

    cfg = config or EvaluationConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise StreamlineError(f"evaluate_models: unknown option {k!r}")
        setattr(cfg, k, v)
    if not models:
        raise StreamlineError("no models to evaluate")
    if baseline is not None and baseline not in models:
        raise StreamlineError(f"baseline {baseline!r} is not one of the models {list(models)}")
    if not cfg.tasks and not cfg.ppl:
        raise StreamlineError("nothing to measure: give config.tasks and/or config.ppl")
    # load every task first: bad task files fail before any model work
    groups: dict[str, dict[str, Any]] = {}
    tasks = resolve_tasks(cfg.tasks, cfg.task_dir, cfg.include_path, groups=groups) if cfg.tasks else []
    texts = [text_name(t) for t in cfg.ppl]
    from ..data import resolve_data_spec

    for name, path in texts:
        if not os.path.isfile(resolve_data_spec(path)):
            raise StreamlineError("no such text file", argument="config.ppl", value=path)

    loaded: dict[str, tuple[Any, Any]] = {}
    info: dict[str, dict[str, Any]] = {}
    for label, spec in models.items():
        if isinstance(spec, (tuple, list)):
            model, tok = spec
            path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
        else:
            _log(f"loading {label}: {spec}", cfg.progress)
            model, tok = load_model_and_tokenizer(str(spec), dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                                  **(load_kwargs or {}))
            path = str(spec)
        loaded[label] = (model, tok)
        info[label] = _model_info(label, path, model)
    if baseline is not None:
        base_layers = info[baseline]["num_layers"]
        info[baseline].setdefault("fraction_removed", 0.0)
        for label, m in info.items():
            if m.get("fraction_removed") is None and label != baseline:
                m["fraction_removed"] = (base_layers - m["num_layers"]) / base_layers if base_layers else None

    report: dict[str, Any] = {"version": 1, "baseline": baseline, "settings": cfg.to_dict(), "versions": versions(),
                              "models": info, "perplexity": {}, "tasks": {}, "pairs": {}, "speed": {}}
    report["task_sources"] = {t.name: {"source": t.source, "kind": t.spec.kind, "delimiter": t.spec.delimiter,
                                       "prompts": t.prompts,
                                       "items": len(t)} for t in tasks}
    for name, path in texts:
        report["perplexity"][name] = {}
        for label, (model, tok) in loaded.items():
            det = perplexity_details(model, tok, path, seq_len=cfg.ppl_seq_len, stride=cfg.ppl_stride,
                                     max_tokens=cfg.ppl_max_tokens, batch_size=cfg.batch_size, progress=cfg.progress)
            ppl = det["token_perplexity"]
            report["perplexity"][name][label] = ppl
            report.setdefault("perplexity_units", {}).setdefault(name, {})[label] = {
                k: det.get(k) for k in ("word_perplexity", "byte_perplexity", "bits_per_byte", "tokens", "words",
                                        "bytes", "seq_len", "stride")}
            _log(f"perplexity {name} [{label}]: token {ppl:.3f}, word {det['word_perplexity']:.3f}, byte "
                 f"{det['byte_perplexity']:.4f} ({det['seq_len']}-token windows)", cfg.progress)

    generative = [t for t in tasks if t.generative]
    tasks = [t for t in tasks if not t.generative]
    if generative:
        from .lm_eval_bridge import run_generative

        report["generative"] = {}
        for t in generative:
            report["generative"][t.name] = {}
            for label, (model, tok) in loaded.items():
                r = run_generative(model, tok, t, limit=cfg.limit, batch_size=cfg.batch_size)
                report["generative"][t.name][label] = r
                _log(f"{t.name} [{label}]: " + ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
                     + f" (n={r['n']}, generated and scored by lm-eval)", cfg.progress)
    results: dict[str, dict[str, TaskResult]] = {}
    for label, (model, tok) in loaded.items():
        if not tasks:
            break
        results[label] = evaluate_tasks(model, tok, tasks, limit=cfg.limit, seed=cfg.sample_seed, batch_size=cfg.batch_size,
                                        prefix_reuse=cfg.prefix_reuse, progress=cfg.progress)
        for t, r in results[label].items():
            report["tasks"].setdefault(t, {})[label] = r.summary()
            _log(f"{t} [{label}]: acc {r.acc:.4f} acc_norm {r.acc_norm:.4f} (n={r.n})", cfg.progress)
        for g, spec in groups.items():  # lm-eval's group score: the members' acc, size-weighted where it says so
            members = [results[label][t] for t in spec["tasks"] if t in results[label]]
            if members:
                w = [m.n if spec["weight_by_size"] else 1 for m in members]
                acc = sum(m.acc * wi for m, wi in zip(members, w)) / sum(w)
                report.setdefault("groups", {}).setdefault(g, {})[label] = {
                    "acc": acc, "n": sum(m.n for m in members), "tasks": [m.task for m in members],
                    "weight_by_size": spec["weight_by_size"]}
                _log(f"{g} [{label}]: acc {acc:.4f} (group of {len(members)} tasks)", cfg.progress)

    if baseline is not None:
        _pairs(report, loaded, results, baseline, cfg, texts)
    placed = {label: info[label]["loading"] for label in loaded if info[label].get("loading")}
    if cfg.speed and placed:  # the timing would measure disk reads / dequantisation, not the model
        report["speed_note"] = ("speed not measured: " + "; ".join(f"{l}: {why}" for l, why in placed.items())
                                + " -- time it loaded whole on one device")
        _log(report["speed_note"], cfg.progress)
    elif cfg.speed:
        from .speed import measure_speed

        report["speed"] = measure_speed({l: m for l, (m, _) in loaded.items()}, prompt_len=cfg.speed_prompt_len,
                                        new_tokens=cfg.speed_new_tokens, repeats=cfg.speed_repeats, progress=cfg.progress)
    if cfg.lm_eval and tasks:
        from .lm_eval_bridge import compare_with_lm_eval, make_hflm

        report["lm_eval"] = {}
        for label, (model, tok) in loaded.items():
            lm = make_hflm(model, tok, batch_size=cfg.batch_size)
            report["lm_eval"][label] = {}
            for t in tasks:
                report["lm_eval"][label][t.name] = compare_with_lm_eval(
                    model, tok, t, limit=cfg.limit, seed=cfg.sample_seed, ours=results[label][t.name], lm=lm)
    return EvaluationResult(report, results)


def _pairs(report, loaded, results, baseline, cfg, texts) -> None:
    from ..perplexity import default_seq_len
    from .agreement import next_token_agreement, task_same_prediction_rate
    from .stability import effective_questions, reference_code_stability, stability_weights, task_stability

    base_model, base_tok = loaded[baseline]
    agreement_text = cfg.agreement_text or (texts[0][1] if texts else None)
    reference = prompts = None  # the dense continuations and their prompts, once for every pruned model
    for label, (model, tok) in loaded.items():
        if label == baseline:
            continue
        pair: dict[str, Any] = {"stability": {}, "same_prediction_rate": {}, "reference_code_stability": {},
                                "stability_effective_questions": {},
                                "relative_acc": {}, "relative_acc_norm": {}, "kl": None, "top1_agreement": None}
        for t, rb in results.get(baseline, {}).items():
            rp = results[label][t]
            pair["stability"][t] = task_stability(rb, rp)
            pair["reference_code_stability"][t] = reference_code_stability(rb.option_perplexities(), rb.correct, rp.correct)
            pair["stability_effective_questions"][t] = effective_questions(stability_weights(rb.option_perplexities()))
            pair["same_prediction_rate"][t] = task_same_prediction_rate(rb, rp)
            pair["relative_acc"][t] = 100.0 * rp.acc / rb.acc if rb.acc else None
            pair["relative_acc_norm"][t] = 100.0 * rp.acc_norm / rb.acc_norm if rb.acc_norm else None
        if agreement_text is not None:
            if len(tok) != len(base_tok) or tok.get_vocab() != base_tok.get_vocab():
                pair["agreement_note"] = "different tokenizers: KL / top-1 agreement not computed"
            else:
                agr = next_token_agreement(base_model, model, base_tok, agreement_text,
                                           seq_len=cfg.ppl_seq_len or default_seq_len(base_model),
                                           max_tokens=cfg.agreement_tokens, batch_size=max(1, cfg.batch_size // 4),
                                           progress=cfg.progress)
                pair["kl"], pair["top1_agreement"] = agr["kl"], agr["top1_agreement"]
                pair["agreement_tokens"] = agr["tokens"]
                pair["agreement_text"] = str(agreement_text)
                if cfg.generate:
                    from .generation import generation_agreement, generation_prompts, greedy_continuations

                    if reference is None:  # the dense continuations, once for every pruned model
                        prompts = generation_prompts(base_tok, agreement_text, cfg.generate, cfg.generate_prompt_tokens,
                                                     cfg.generate_tokens)
                        reference = greedy_continuations(base_model, prompts, cfg.generate_tokens, cfg.batch_size)
                    pair["generation"] = gen = generation_agreement(
                        base_model, model, base_tok, agreement_text, n=cfg.generate, prompt_tokens=cfg.generate_prompt_tokens,
                        new_tokens=cfg.generate_tokens, batch_size=cfg.batch_size, reference=reference, prompts=prompts)
                    _log(f"generation [{label}] vs {baseline}: exact match {gen['exact_match']:.3f}, ROUGE-L "
                         f"{gen['rouge_l']:.3f}, {gen['prefix_tokens']:.1f} tokens agree before the first difference",
                         cfg.progress)
        report["pairs"][pair_key(label, baseline)] = pair
