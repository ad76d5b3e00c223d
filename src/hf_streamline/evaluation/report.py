"""The evaluation report: ``report.json`` (the numbers), ``report.md`` (tables rendered from the same numbers) and PNGs.

``report.json`` keys (other code reads them; more keys may be added, none removed):

    {"models": {LABEL: {"path", "num_layers", "params", "non_embedding_params", ...}},
     "perplexity": {TEXT_NAME: {LABEL: float}},
     "tasks": {TASK: {LABEL: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", ...}}},
     "pairs": {"<pruned>_vs_<baseline>": {"stability": {TASK: float}, "same_prediction_rate": {TASK: float},
                                          "kl": float, "top1_agreement": float, ...}},
     "speed": {LABEL: {"prefill_tokens_per_s", "decode_tokens_per_s", ...}}}

A standard error that is undefined (one item) is written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..formatting import number, percent, plus_minus
from ..plotting import _plt
from ..utils import atomic_output_dir

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
TASKS_PNG = "tasks.png"
ACC_VS_REMOVED_PNG = "accuracy_vs_removed.png"
PPL_VS_REMOVED_PNG = "perplexity_vs_removed.png"


# what the stability column computes (evaluation/stability.py); the model card says the same
STABILITY_NOTE = ("Stability (LLM-Streamline): each question is weighted by a softmax, over the questions, of the "
                  "spread (standard deviation) of the baseline's perplexities of its answer options; stability is the "
                  "summed weight of the questions on which the model and the baseline are both right or both wrong "
                  "(not the fraction of items with the same answer: that is *same prediction*). In brackets: the "
                  "effective number of questions the weights count (1/Σw²); near 1, stability reflects one or two "
                  "questions only.")


def pair_key(pruned: str, baseline: str) -> str:
    return f"{pruned}_vs_{baseline}"


def clean_json(obj: Any) -> Any:
    """NaN / inf -> None, tuples -> lists, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------------------------------
# markdown


# the report's names for the one formatter (hf_streamline.formatting)
fmt, fmt_pm, fmt_ppl, fmt_rel = number, plus_minus, number, percent


def relative(value: Any, base: Any) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return 100.0 * value / base


def render_markdown(report: dict[str, Any]) -> str:
    models = report.get("models", {})
    base = report.get("baseline")
    pairs = report.get("pairs", {})
    lines = ["# Evaluation report", ""]
    s = report.get("settings", {})
    if s:
        lim = s.get("limit")
        scope = "all items" if lim is None else f"a seeded sample of at most {lim} items per task (seed {s.get('seed')})"
        lines.append(f"Zero-shot, {scope}; scored like lm-eval-harness (acc: sum of the log-probabilities of the choice "
                     "tokens; acc_norm: the same divided by the choice length in characters). ± is the standard error.")
        lines.append("")
    lines += ["## Models", "", "| model | path | layers | removed | params | non-embedding params |", "|---|---|---:|---:|---:|---:|"]
    for label, m in models.items():
        frac = m.get("fraction_removed")
        lines.append(f"| {label} | `{m.get('path')}` | {m.get('num_layers')} | {fmt_rel(None if frac is None else 100 * frac)} | "
                     f"{fmt(m.get('params'))} | {fmt(m.get('non_embedding_params'))} |")
    lines.append("")
    ppl = report.get("perplexity", {})
    if ppl:
        labels = list(models)
        lines += ["## Perplexity", "", "| text | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        for text, vals in ppl.items():
            lines.append(f"| {text} (token) | " + " | ".join(fmt_ppl(vals.get(l)) for l in labels) + " |")
            units = report.get("perplexity_units", {}).get(text, {})
            if units and all(units.get(l, {}).get("word_perplexity") is not None for l in labels):
                lines.append(f"| {text} (word) | " + " | ".join(fmt_ppl(units[l]["word_perplexity"]) for l in labels) + " |")
                lines.append(f"| {text} (byte) | " + " | ".join(f"{units[l]['byte_perplexity']:.4f}" for l in labels) + " |")
        any_units = next((u for per in report.get("perplexity_units", {}).values() for u in per.values()), None)
        lines += ["", "Token perplexity: exp(mean NLL per token) in non-overlapping "
                  f"{any_units['seq_len'] if any_units else '?'}-token windows; word / byte perplexity: the same summed "
                  "NLL per whitespace-separated word / per UTF-8 byte of the scored text (lm-eval's `wikitext` "
                  "metrics; they do not depend on the tokenizer).", ""]
    tasks = report.get("tasks", {})
    if tasks:
        lines += ["## Tasks", ""]
        summary = _summary_rows(report)
        if summary:
            lines += ["| task | " + " | ".join(summary["labels"]) + " |", "|---|" + "---:|" * len(summary["labels"])]
            for task, row in summary["rows"]:
                lines.append(f"| {task} | " + " | ".join(fmt(v) for v in row) + " |")
            lines += ["", "(acc; one table per task below)", ""]
    for task, per_model in tasks.items():
        any_res = next(iter(per_model.values()))
        lines += [f"### {task}", ""]
        extra = " | perplexity" if "perplexity" in any_res else ""
        lines += [f"| model | n | acc | acc_norm | acc rel. to {base or 'baseline'} | acc_norm rel. | stability "
                  f"(effective questions) | same prediction{extra} |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if extra else "")]
        b = per_model.get(base) if base else None
        for label, r in per_model.items():
            pair = pairs.get(pair_key(label, base), {}) if base and label != base else {}
            rel_acc = relative(r.get("acc"), b.get("acc")) if b and label != base else None
            rel_norm = relative(r.get("acc_norm"), b.get("acc_norm")) if b and label != base else None
            row = (f"| {label} | {r.get('n')} | {fmt_pm(r.get('acc'), r.get('acc_stderr'))} | "
                   f"{fmt_pm(r.get('acc_norm'), r.get('acc_norm_stderr'))} | {fmt_rel(rel_acc)} | {fmt_rel(rel_norm)} | "
                   f"{_fmt_stability(pair, task)} | {fmt(pair.get('same_prediction_rate', {}).get(task))} |")
            if extra:
                row += f" {fmt_ppl(r.get('perplexity'))} |"
            lines.append(row)
        lines.append("")
    if tasks and any(p.get("stability") for p in pairs.values()):
        lines += [STABILITY_NOTE, ""]
    if pairs:
        lines += ["## Agreement with the baseline", "",
                  "| pair | mean KL(baseline ‖ model), nats/token | top-1 agreement | mean stability | mean same prediction |",
                  "|---|---:|---:|---:|---:|"]
        for key, p in pairs.items():
            st = list((p.get("stability") or {}).values())
            sp = list((p.get("same_prediction_rate") or {}).values())
            lines.append(f"| {key} | {fmt(p.get('kl'))} | {fmt(p.get('top1_agreement'))} | "
                         f"{fmt(sum(st) / len(st) if st else None)} | {fmt(sum(sp) / len(sp) if sp else None)} |")
        lines.append("")
        gens = {k: p["generation"] for k, p in pairs.items() if p.get("generation")}
        if gens:
            g0 = next(iter(gens.values()))
            lines += ["## Generation (greedy, against the baseline's generations)", "",
                      f"{g0['prompts']} prompts of {g0['prompt_tokens']} tokens from the agreement text, "
                      f"{g0['new_tokens']} greedy tokens each. Multiple-choice accuracy overstates what survives pruning; "
                      "these say whether the model still writes what its baseline writes (1.0 = the same text).", "",
                      "| pair | exact match | tokens agreeing before the first difference | same token at a position | "
                      "ROUGE-L F1 |", "|---|---:|---:|---:|---:|"]
            for key, g in gens.items():
                lines.append(f"| {key} | {fmt(g['exact_match'])} | {g['prefix_tokens']:.1f} of {g['new_tokens']} | "
                             f"{fmt(g['token_match'])} | {fmt(g['rouge_l'])} |")
            ex = g0.get("example") or {}
            if ex:
                lines += ["", "First prompt: " + _quote(ex.get("prompt", "")), "",
                          "- baseline: " + _quote(ex.get("base", "")),
                          f"- {next(iter(gens))}: " + _quote(ex.get("model", ""))]
            lines.append("")
    groups = report.get("groups") or {}
    if groups:
        labels = list(models)
        lines += ["## Task groups (lm-eval's aggregate of the members' acc)", "",
                  "| group | tasks | items | weighted by size | " + " | ".join(labels) + " |",
                  "|---|---:|---:|---|" + "---:|" * len(labels)]
        for g, per in groups.items():
            first = next(iter(per.values()))
            lines.append(f"| {g} | {len(first['tasks'])} | {first['n']} | {'yes' if first['weight_by_size'] else 'no'} | "
                         + " | ".join(fmt((per.get(l) or {}).get("acc")) for l in labels) + " |")
        lines.append("")
    generative = report.get("generative") or {}
    if generative:
        labels = list(models)
        lines += ["## Generative tasks (generated and scored by lm-eval)", "",
                  "| task | metric | items | " + " | ".join(labels) + " |", "|---|---|---:|" + "---:|" * len(labels)]
        for task, per in generative.items():
            first = next(iter(per.values()))
            for metric in first["metrics"]:
                lines.append(f"| {task} | {metric} | {first['n']} | "
                             + " | ".join(fmt((per.get(l) or {}).get("metrics", {}).get(metric)) for l in labels) + " |")
        lines.append("")
    speed = report.get("speed", {})
    if speed:
        lines += ["## Speed", "", "| model | prefill tokens/s | decode tokens/s | prefill vs baseline | decode vs baseline |",
                  "|---|---:|---:|---:|---:|"]
        bs = speed.get(base, {}) if base else {}
        for label, v in speed.items():
            rp = v["prefill_tokens_per_s"] / bs["prefill_tokens_per_s"] if bs and label != base else None
            rd = v["decode_tokens_per_s"] / bs["decode_tokens_per_s"] if bs and label != base else None
            lines.append(f"| {label} | {v['prefill_tokens_per_s']:.1f} | {v['decode_tokens_per_s']:.1f} | "
                         f"{'–' if rp is None else f'{rp:.2f}×'} | {'–' if rd is None else f'{rd:.2f}×'} |")
        any_speed = next(iter(speed.values()))
        lines += ["", f"Median of {any_speed.get('repeats')} interleaved runs; prompt {any_speed.get('prompt_len')} tokens, "
                      f"{any_speed.get('new_tokens')} decoded tokens with the KV cache, batch {any_speed.get('batch_size')}.", ""]
    if report.get("speed_note"):
        lines += ["## Speed", "", report["speed_note"] + ".", ""]
    lm = report.get("lm_eval")
    if lm:
        lines += ["## lm-eval-harness on the same items", "", "| model | task | acc (ours) | acc (lm-eval) | acc_norm (ours) | "
                  "acc_norm (lm-eval) | max abs log-likelihood difference |", "|---|---|---:|---:|---:|---:|---:|"]
        for label, per_task in lm.items():
            for task, v in per_task.items():
                ours = tasks.get(task, {}).get(label, {})
                lines.append(f"| {label} | {task} | {fmt(ours.get('acc'))} | {fmt(v.get('acc'))} | {fmt(ours.get('acc_norm'))} | "
                             f"{fmt(v.get('acc_norm'))} | {v.get('max_abs_loglikelihood_diff', float('nan')):.2e} |")
        lines.append("")
    pngs = report.get("figures", [])
    if pngs:
        lines += ["## Figures", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    return "\n".join(lines)


def _fmt_stability(pair: dict[str, Any], task: str) -> str:
    st = pair.get("stability", {}).get(task)
    eff = pair.get("stability_effective_questions", {}).get(task)
    return fmt(st) if eff is None else f"{fmt(st)} ({eff:.1f})"


def _summary_rows(report: dict[str, Any]) -> dict[str, Any] | None:
    tasks = report.get("tasks", {})
    labels = list(report.get("models", {}))
    if not tasks or not labels:
        return None
    rows = []
    for task, per_model in tasks.items():
        rows.append((task, [per_model.get(l, {}).get("acc") for l in labels]))
    means = []
    for i, _ in enumerate(labels):
        vals = [r[1][i] for r in rows if r[1][i] is not None]
        means.append(sum(vals) / len(vals) if vals else None)
    rows.append(("**mean**", means))
    return {"labels": labels, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------------
# pictures


def plot_task_bars(report: dict[str, Any], path: str | os.PathLike) -> str:
    """Per-task bars (acc and acc_norm), one bar per model, with standard-error whiskers."""
    plt = _plt()
    tasks = list(report["tasks"])
    labels = list(report["models"])
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.1 * len(tasks) * max(1, len(labels)) / 2 + 2), 6.4), sharex=True)
    width = 0.8 / max(len(labels), 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, ("acc", "acc_norm")):
        for k, label in enumerate(labels):
            vals = [report["tasks"][t].get(label, {}).get(metric) for t in tasks]
            errs = [report["tasks"][t].get(label, {}).get(f"{metric}_stderr") or 0.0 for t in tasks]
            xs = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(tasks))]
            ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, yerr=errs, capsize=2, label=label,
                   color=colors[k % len(colors)])
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=min(len(labels), 4))
    axes[0].set_title("zero-shot accuracy per task (± standard error)", fontsize=10, loc="left")
    axes[1].set_xticks(range(len(tasks)))
    axes[1].set_xticklabels(tasks, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _fraction_points(report: dict[str, Any]) -> list[tuple[float, str]]:
    pts = [(m["fraction_removed"], label) for label, m in report["models"].items() if m.get("fraction_removed") is not None]
    return sorted(pts)


def plot_vs_fraction(report: dict[str, Any], folder: str | os.PathLike) -> list[str]:
    """Accuracy (every task and their mean) and perplexity against the fraction of layers removed."""
    pts = _fraction_points(report)
    if len(pts) < 2:
        return []
    plt = _plt()
    written = []
    xs = [100 * f for f, _ in pts]
    if report.get("tasks"):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        means = []
        for task, per_model in report["tasks"].items():
            ys = [per_model.get(label, {}).get("acc") for _, label in pts]
            ax.plot(xs, ys, marker="o", alpha=0.6, label=task)
            means.append(ys)
        mean = [sum(c) / len(c) if all(v is not None for v in c) else None for c in zip(*means)]
        ax.plot(xs, mean, marker="s", color="black", linewidth=2.5, label="mean")
        ax.set_xlabel("layers removed (%)")
        ax.set_ylabel("acc")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title("accuracy vs layers removed", fontsize=10, loc="left")
        fig.tight_layout()
        p = Path(folder) / ACC_VS_REMOVED_PNG
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p.name)
    if report.get("perplexity"):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for text, vals in report["perplexity"].items():
            ax.plot(xs, [vals.get(label) for _, label in pts], marker="o", label=text)
        ax.set_yscale("log")
        ax.set_xlabel("layers removed (%)")
        ax.set_ylabel("perplexity (log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title("perplexity vs layers removed", fontsize=10, loc="left")
        fig.tight_layout()
        p = Path(folder) / PPL_VS_REMOVED_PNG
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p.name)
    return written


# ---------------------------------------------------------------------------------------------------------------------
# writing


def write_report(report: dict[str, Any], output: str | os.PathLike, overwrite: bool = False,
                 samples: dict[str, dict[str, list[dict[str, Any]]]] | None = None, plots: bool = True) -> Path:
    """Write ``report.json``, ``report.md``, the PNGs and (optionally) per-item samples into ``output`` atomically.

    ``samples``: ``{label: {task: [per-item dicts]}}`` -> ``samples/<label>/<task>.jsonl``.
    """
    report = clean_json(report)
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        figures = []
        if plots and report.get("tasks") and report.get("models"):
            figures.append(Path(plot_task_bars(report, tmp / TASKS_PNG)).name)
        if plots and report.get("models"):
            figures += plot_vs_fraction(report, tmp)
        report["figures"] = figures
        if samples:
            for label, per_task in samples.items():
                d = tmp / "samples" / label
                d.mkdir(parents=True, exist_ok=True)
                for task, rows in per_task.items():
                    with open(d / f"{task}.jsonl", "w", encoding="utf-8") as fh:
                        for row in rows:
                            fh.write(json.dumps(clean_json(row)) + "\n")
        (tmp / REPORT_JSON).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        (tmp / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    return Path(output)


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_JSON
    return json.loads(p.read_text(encoding="utf-8"))


def _quote(text: str, limit: int = 300) -> str:
    """One line of generated text for markdown (newlines shown as ⏎, cut at ``limit`` characters)."""
    t = text.replace("\n", " ⏎ ").replace("|", "\\|")
    return "`" + (t[:limit] + "…" if len(t) > limit else t).replace("`", "'") + "`"
