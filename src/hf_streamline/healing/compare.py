"""Every healing method on the same pruned model under the same token budget, side by side.

Rows: the dense teacher (reference), the pruned model without healing, then one row per method spec.  Columns (the
layout of the Reassessing paper's Tables 2 and 4): trainable parameters, training tokens and steps, wall time, peak
memory, perplexity on each text, accuracy on each task and their average.  Written as ``comparison.json``,
``comparison.md`` and ``comparison.png``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import StreamlineError
from ..formatting import MISSING, count, number
from ..log import get_logger
from ..options import COMPARE_METHODS as DEFAULT_METHODS
from ..utils import atomic_output_dir, versions
from .api import heal, release_memory
from .base import HealingConfig, count_parameters, get_healing_method
from .data import HealingData
from .partial import is_cut, resolve_last_k

logger = get_logger(__name__)


@dataclass
class CompareConfig:
    """What to compare and how to measure it (stored in ``comparison.json`` under ``settings``)."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS), metadata={"help": "method specs (partial:K, lora, qlora, distill, distill:lora, ...)."})
    budget_tokens: int = field(default=65536, metadata={"help": "training tokens per method (the same for all)."})
    ppl: list[str] = field(default_factory=list, metadata={"help": "text files (NAME=FILE) for perplexity."})
    ppl_tokens: int | None = field(default=None, metadata={"help": "score at most this many tokens of each text (a fixed slice)."})
    ppl_seq_len: int = field(default=256, metadata={"help": "perplexity window (tokens)."})
    tasks: list[str] = field(default_factory=list, metadata={"help": "tasks (names, .jsonl files or NAME=FILE) for zero-shot accuracy."})
    limit: int | None = field(default=None, metadata={"help": "at most this many items per task (a seeded sample, the same for every row)."})
    task_dir: str | None = field(default=None, metadata={"help": "folder of <task>.jsonl files for task names."})
    eval_batch_size: int = field(default=8, metadata={"help": "sequences / questions per forward pass in evaluation."})
    include_teacher: bool = field(default=True, metadata={"help": "evaluate the dense teacher as a reference row."})
    include_unhealed: bool = field(default=True, metadata={"help": "evaluate the pruned model before healing."})
    learning_rates: dict[str, float] = field(default_factory=dict, metadata={"help": "learning rate per method name (partial, lora, qlora, distill); others use the healing config's or the method's default."})
    seed: int = field(default=0, metadata={"help": "seed of the task item sample."})
    progress: bool = field(default=True, metadata={"help": "progress messages."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log(msg: str, on: bool) -> None:
    if on:
        logger.info(f"[compare-healing] {msg}")


def _text_name(spec: str) -> tuple[str, str]:
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
        return name, path
    base = Path(spec).name
    return (base.split(".")[0] if "." in base else base), spec


def _evaluation_module():
    try:
        from .. import evaluation
    except ImportError:  # evaluation is optional here: perplexity only
        return None
    return evaluation


class _Evaluator:
    """Perplexity on fixed slices and task accuracy on seeded items, the same for every row."""

    def __init__(self, cfg: CompareConfig):
        self.cfg = cfg
        self.texts = [_text_name(t) for t in cfg.ppl]
        from ..data import resolve_data_spec

        for name, path in self.texts:
            if not os.path.isfile(resolve_data_spec(path)):
                raise StreamlineError("no such text file", argument="config.ppl", value=path)
        self.tasks: list[Any] = []
        self.evaluation = _evaluation_module() if cfg.tasks else None
        if cfg.tasks and self.evaluation is None:
            _log("hf_streamline.evaluation is not available: task accuracy is skipped (perplexity only)", True)
        elif cfg.tasks:
            self.tasks = [self.evaluation.resolve_task(t, cfg.task_dir) for t in cfg.tasks]

    def __call__(self, model: nn.Module, tokenizer: Any) -> dict[str, Any]:
        from ..perplexity import evaluate_perplexity

        out: dict[str, Any] = {"perplexity": {}, "tasks": {}}
        for name, path in self.texts:
            out["perplexity"][name] = evaluate_perplexity(model, tokenizer, path, seq_len=self.cfg.ppl_seq_len,
                                                          max_tokens=self.cfg.ppl_tokens,
                                                          batch_size=self.cfg.eval_batch_size, progress=False)
        if self.tasks:
            results = self.evaluation.evaluate_tasks(model, tokenizer, self.tasks, limit=self.cfg.limit,
                                                     seed=self.cfg.seed, batch_size=self.cfg.eval_batch_size,
                                                     progress=False)
            for t, r in results.items():
                out["tasks"][t] = {"acc": r.acc, "acc_stderr": r.acc_stderr, "acc_norm": r.acc_norm, "n": r.n}
            accs = [v["acc"] for v in out["tasks"].values()]
            out["avg_acc"] = sum(accs) / len(accs) if accs else None
        return out


def compare_healing(model: str | os.PathLike | tuple[nn.Module, Any], data: HealingData,
                    config: CompareConfig | None = None, healing: HealingConfig | None = None, *,
                    teacher: str | os.PathLike | nn.Module | None = None, dtype: Any = None, device: str | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """Heal the pruned ``model`` (a folder, or ``(model, tokenizer)``: copied for every method) with every method of
    ``config.methods`` under ``config.budget_tokens`` and evaluate each result the same way.  ``healing`` holds the
    shared training settings (batch size, sequence length, learning rates ...).  Returns the report dict
    (:func:`write_comparison` writes it)."""
    from ..loading import load_model_and_tokenizer

    cfg = config or CompareConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise StreamlineError(f"compare_healing: unknown option {k!r}")
        setattr(cfg, k, v)
    if not cfg.methods:
        raise StreamlineError("empty: name at least one healing method", argument="config.methods")
    dup = {m for m in cfg.methods if cfg.methods.count(m) > 1}
    if dup:
        raise StreamlineError(f"names {sorted(dup)} twice", argument="config.methods")
    if cfg.budget_tokens is None or cfg.budget_tokens < 1:
        raise StreamlineError("must be >= 1", argument="config.budget_tokens", value=cfg.budget_tokens)
    base_cfg = copy.deepcopy(healing) if healing is not None else HealingConfig()
    base_cfg.budget_tokens, base_cfg.max_steps = int(cfg.budget_tokens), None
    base_cfg.progress = False

    if isinstance(model, (tuple, list)):
        pristine, tokenizer = model
        model_path = None

        def fresh() -> nn.Module:
            return copy.deepcopy(pristine)
    else:
        model_path = str(model)

        def fresh() -> nn.Module:
            return load_model_and_tokenizer(model_path, dtype=dtype, device=device)[0]

        pristine, tokenizer = load_model_and_tokenizer(model_path, dtype=dtype, device=device)
    teacher_model = teacher
    if teacher is not None and not isinstance(teacher, nn.Module):
        teacher_model = load_model_and_tokenizer(str(teacher), dtype=dtype, device=device)[0]

    from ..plan import PLAN_FILENAME, StreamlinePlan

    plan = (StreamlinePlan.load(model_path) if model_path is not None
            and os.path.isfile(os.path.join(model_path, PLAN_FILENAME)) else None)
    if is_cut(base_cfg.last_k):  # every layer above the first removed one (and N below), from the plan
        base_cfg.last_k = resolve_last_k(base_cfg.last_k, plan)
    if base_cfg.tied_policy == "auto" and base_cfg.base_parameters is None:  # no method outgrows the base model
        from .base import estimate_base_parameters

        base_cfg.base_parameters = estimate_base_parameters(
            pristine, plan.num_layers_before if plan is not None else None,
            teacher_model if isinstance(teacher_model, nn.Module) else None)

    # check every method before any work: a bad spec or a missing bitsandbytes fails now
    methods = []
    for spec in cfg.methods:
        method_cfg = base_cfg.with_spec(spec)
        if method_cfg.method in cfg.learning_rates:
            method_cfg.learning_rate = float(cfg.learning_rates[method_cfg.method])
        method = get_healing_method(method_cfg)
        method.check(pristine)
        if method.needs_teacher:
            from .distill import check_teacher

            check_teacher(pristine, teacher_model)
        methods.append((spec, method_cfg, method))
    evaluator = _Evaluator(cfg)
    report: dict[str, Any] = {"version": 1, "model": model_path or getattr(pristine.config, "_name_or_path", ""),
                              "teacher": str(teacher) if teacher is not None and not isinstance(teacher, nn.Module)
                              else (getattr(teacher.config, "_name_or_path", "") if teacher is not None else None),
                              "settings": cfg.to_dict(), "healing": base_cfg.to_dict(), "data": data.describe(),
                              "versions": versions(), "rows": []}
    from ..architecture import num_layers

    report["layers"] = num_layers(pristine)
    if cfg.include_teacher and teacher_model is not None:
        _log("evaluating the dense teacher", cfg.progress)
        row = {"label": "dense (teacher)", "method": "dense", "layers": num_layers(teacher_model),
               "parameters": count_parameters(teacher_model)}
        row.update(evaluator(teacher_model, tokenizer))
        report["rows"].append(row)
    if cfg.include_unhealed:
        _log("evaluating the pruned model without healing", cfg.progress)
        row = {"label": "pruned, no healing", "method": "none", "layers": num_layers(pristine),
               "parameters": count_parameters(pristine), "trainable_parameters": 0, "train_tokens": 0}
        row.update(evaluator(pristine, tokenizer))
        report["rows"].append(row)
    if model_path is not None:
        pristine = None
        release_memory()
    for spec, method_cfg, method in methods:
        _log(f"healing with {spec} ({cfg.budget_tokens} tokens)", cfg.progress)
        m = fresh()
        result = heal(m, tokenizer, data, method_cfg, teacher=teacher_model if method.needs_teacher else None,
                      model_path=model_path, merge=True)
        rec = result.record
        row = {"label": spec, "method": rec["method"], "layers": rec["layers"],
               "parameters": rec["parameters_after"], "trainable_parameters": rec["trainable_parameters"],
               "trainable_fraction": rec["trainable_fraction"], "train_tokens": rec["train_tokens"],
               "steps": rec["global_step"], "learning_rate": rec["learning_rate"], "wall_time_s": rec["wall_time_s"],
               "peak_memory_mb": rec["peak_memory"]["peak_mb"], "memory_delta_mb": rec["peak_memory"]["delta_mb"],
               "memory_kind": rec["peak_memory"]["kind"], "train_loss": rec["train_loss"],
               "eval_loss_before": rec["eval_loss_before"], "eval_loss_best": rec["eval_loss_best"],
               "input_embedding": rec.get("input_embedding")}
        _log(f"evaluating {spec}", cfg.progress)
        row.update(evaluator(result.model, tokenizer))
        if row["perplexity"]:
            _log(f"{spec}: " + ", ".join(f"PPL {k} {v:.2f}" for k, v in row["perplexity"].items())
                 + (f", avg acc {row['avg_acc']:.3f}" if row.get("avg_acc") is not None else "")
                 + f", {rec['wall_time_s']:.1f} s", cfg.progress)
        report["rows"].append(row)
        del result, m
        release_memory()
    return report


# ---- output -------------------------------------------------------------------------------------------------------

def render_comparison(report: dict[str, Any]) -> str:
    """The markdown table: one row per method, cost columns then quality columns."""
    rows = report["rows"]
    texts = list(next((r["perplexity"] for r in rows if r.get("perplexity")), {}) or {})
    tasks = list(next((r["tasks"] for r in rows if r.get("tasks")), {}) or {})
    s = report["settings"]
    head = ["Method", "Layers", "Trainable params", "Train tokens", "Wall time (s)", "Peak memory (MB)"]
    head += [f"PPL {t}" for t in texts] + tasks + (["Avg acc"] if tasks else [])
    lines = [f"Healing comparison on `{report.get('model')}` (teacher `{report.get('teacher')}`), "
             f"budget {s['budget_tokens']} training tokens per method.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        mem = r.get("peak_memory_mb")
        cells = [r["label"], str(r.get("layers", MISSING)),
                 (f"{count(r['trainable_parameters'])} ({100 * r['trainable_fraction']:.1f}%)"
                  if r.get("trainable_fraction") is not None else count(r.get("trainable_parameters"))),
                 count(r.get("train_tokens")), f"{r['wall_time_s']:.1f}" if r.get("wall_time_s") is not None else MISSING,
                 (f"{mem:.0f} (+{r.get('memory_delta_mb', 0):.0f})" if mem is not None else MISSING)]
        cells += [number(r.get("perplexity", {}).get(t)) for t in texts]
        cells += [f"{100 * r['tasks'][t]['acc']:.1f}" if t in r.get("tasks", {}) else MISSING for t in tasks]
        if tasks:
            cells.append(f"{100 * r['avg_acc']:.1f}" if r.get("avg_acc") is not None else MISSING)
        lines.append("| " + " | ".join(cells) + " |")
    mem_kind = next((r.get("memory_kind") for r in rows if r.get("memory_kind")), "process_rss")
    notes = ["", f"Peak memory: {'CUDA max allocated' if mem_kind == 'cuda_allocated' else 'process RSS'} during "
                 "training (in brackets: its rise over the start of the run). Wall time: preparation + training.",
             f"Perplexity: {s.get('ppl_tokens') or 'all'} tokens of each text, windows of {s.get('ppl_seq_len')}."]
    if tasks:
        notes.append(f"Accuracy (%): zero-shot, {s.get('limit') or 'all'} items per task (seed {s.get('seed')}), "
                     "the same items for every row.")
    return "\n".join(lines + notes) + "\n"


def plot_comparison(report: dict[str, Any], path: str | os.PathLike) -> str:
    """Perplexity per method (log scale), average accuracy, and cost (trainable parameters vs perplexity)."""
    from ..plotting import _plt

    plt = _plt()
    rows = report["rows"]
    labels = [r["label"] for r in rows]
    texts = list(next((r["perplexity"] for r in rows if r.get("perplexity")), {}) or {})
    has_acc = any(r.get("avg_acc") is not None for r in rows)
    panels = 1 + int(has_acc) + 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4))
    x = list(range(len(rows)))
    ax = axes[0]
    width = 0.8 / max(1, len(texts))
    for j, t in enumerate(texts):
        vals = [r.get("perplexity", {}).get(t) or float("nan") for r in rows]
        ax.bar([i + j * width - 0.4 + width / 2 for i in x], vals, width, label=t)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("perplexity (log)")
    ax.set_title("perplexity (lower is better)", fontsize=10)
    if texts:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    k = 1
    if has_acc:
        ax = axes[k]
        k += 1
        ax.bar(x, [100 * (r.get("avg_acc") or float("nan")) for r in rows], color="#2ca02c")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("average accuracy (%)")
        ax.set_title("task accuracy (higher is better)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[k]
    first = texts[0] if texts else None
    for r in rows:
        if r.get("trainable_parameters") and first and r.get("perplexity", {}).get(first):
            ax.scatter(r["trainable_parameters"], r["perplexity"][first], s=30 + 4 * (r.get("wall_time_s") or 0) ** 0.5)
            ax.annotate(r["label"], (r["trainable_parameters"], r["perplexity"][first]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"perplexity {first or ''}")
    ax.set_title("cost vs quality (marker size ~ wall time)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.suptitle(f"Healing under {report['settings']['budget_tokens']} training tokens — {Path(str(report.get('model'))).name}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_comparison(report: dict[str, Any], output: str | os.PathLike, overwrite: bool = False) -> Path:
    """``output/comparison.{json,md,png}``, written atomically."""
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        (tmp / "comparison.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        (tmp / "comparison.md").write_text(render_comparison(report), encoding="utf-8")
        plot_comparison(report, tmp / "comparison.png")
    return Path(output)
