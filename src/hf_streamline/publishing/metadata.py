"""A model card's metadata: huggingface_hub's ``ModelCardData`` (base model, licence, tags, ``model-index``, the
``streamline:`` plan summary) and the ``.eval_results`` entries, with every task's and text's dataset id from the task
registry (``hf_streamline.evaluation.tasks``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..plan import PLAN_FILENAME, StreamlinePlan
from .folder import normalize_report

TAGS = ("hf-streamline", "layer-pruning")

# evaluation task / text name -> (Hub dataset id, config, split, pretty name); the registered tasks' entries come
# from the task registry (one source for where a task's data lives)
DATASETS: dict[str, tuple[str, str | None, str, str]] = {
    "hellaswag": ("Rowan/hellaswag", None, "validation", "HellaSwag"),
    "mmlu": ("cais/mmlu", "all", "test", "MMLU"),
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "WikiText-2"),
    "wikitext": ("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "WikiText-2"),
    "ptb": ("ptb-text-only/ptb_text_only", None, "test", "Penn Treebank"),
    "tinystories": ("roneneldan/TinyStories", None, "validation", "TinyStories"),
}


def _registered_task_datasets() -> None:
    from ..evaluation.tasks import TASK_ALIASES, TASKS

    for name, spec in TASKS.items():
        if spec.hub is not None:
            DATASETS[name] = (spec.hub.dataset, spec.hub.config, spec.hub.split, spec.title or name)
    for alias, name in TASK_ALIASES.items():
        if name in DATASETS:
            DATASETS[alias] = DATASETS[name]


_registered_task_datasets()


def text_key(text: str) -> str:
    stem = Path(str(text)).name.lower()
    for key in ("wikitext2", "wikitext", "ptb", "tinystories"):
        if key in stem.replace("-", "").replace("_", ""):
            return key
    return stem


def text_label(text: str) -> str:
    if text == "calibration":
        return "calibration text (in-sample)"
    key = text_key(text)
    if key in DATASETS:
        return DATASETS[key][3]
    return Path(str(text)).name or str(text)


def _streamline_summary(plan: StreamlinePlan) -> dict[str, Any]:
    ops = []
    for op in plan.operations:
        ops.append({k: v for k, v in op.to_dict().items() if k in ("type", "layers", "kind", "rule", "trained")})
    summary = {
        "base_model": plan.base_model,
        "method": plan.method,
        "metric": plan.metric,
        "selection": plan.selection,
        "num_layers_before": plan.num_layers_before,
        "num_layers_after": plan.num_layers_after,
        "removed_layers": list(plan.removed_layers),
        "operations": ops,
        "calibration": plan.calibration,
        "healing": [h.get("type", "training") if isinstance(h, dict) else str(h) for h in plan.healing],
        "plan": PLAN_FILENAME,
        "version": plan.versions.get("hf_streamline"),
    }
    summary = {k: v for k, v in summary.items() if v not in (None, [], {})}
    return json.loads(json.dumps(summary, default=str))  # plain YAML-safe types


# ----------------------------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------------------------
def _model_index(ctx: dict, report: dict | None) -> list:
    from huggingface_hub import EvalResult

    out = []
    settings = (report or {}).get("settings") or {}
    units = (report or {}).get("perplexity_units") or {}
    texts = {(text_key(t), text_label(t)): t for t in ((report or {}).get("perplexity") or {})}
    for r in ctx["perplexity_rows"]:
        if r.get("value") is None or r.get("key") is None:
            continue
        ds = DATASETS.get(r["key"])
        raw = texts.get((r["key"], r["text"]))
        u = (units.get(raw) or {}).get("pruned") or {} if raw else {}
        # how it was measured travels with the number: the window, the tokens scored, the cap on them
        args = {k: v for k, v in (("window_tokens", u.get("seq_len")), ("scored_tokens", u.get("tokens")),
                                  ("token_cap", settings.get("ppl_max_tokens"))) if v is not None}
        out.append(EvalResult(task_type="text-generation", task_name="Text Generation",
                              dataset_type=ds[0] if ds else r["key"], dataset_name=ds[3] if ds else r["text"],
                              dataset_config=ds[1] if ds else None, dataset_split=ds[2] if ds else None,
                              metric_type="perplexity", metric_name="Perplexity", metric_value=round(float(r["value"]), 4),
                              metric_args=args or None))
    sources = (report or {}).get("task_sources") or {}
    for task, by_label in ((report or {}).get("tasks") or {}).items():
        p = by_label.get("pruned") or {}
        ds = DATASETS.get(task)
        args = {"num_few_shot": 0, **_sample_args(p.get("n"), (sources.get(task) or {}).get("items"), settings)}
        for key, name in (("acc", "accuracy"), ("acc_norm", "normalized accuracy")):
            if p.get(key) is None:
                continue
            out.append(EvalResult(task_type="text-generation", task_name="Text Generation",
                                  dataset_type=ds[0] if ds else task, dataset_name=ds[3] if ds else task,
                                  dataset_config=ds[1] if ds else None, dataset_split=ds[2] if ds else None,
                                  dataset_args=args, metric_type=key, metric_name=name,
                                  metric_value=round(float(p[key]), 4)))
    return out


def _sample_args(n: int | None, total: int | None, settings: dict) -> dict:
    """Which items a task result covers: ``items`` scored of ``items_in_source``, and how they were chosen."""
    out: dict = {}
    if n is not None:
        out["items"] = int(n)
    if total is not None:
        out["items_in_source"] = int(total)
    if n is not None and total is not None and n < total:
        # reports before issue 14 say "seed" and always drew a seeded sample; later ones "sample_seed" (None: first)
        seed = settings.get("sample_seed") if "sample_seed" in settings else settings.get("seed", 0)
        out["sample"] = "first items" if seed is None else f"seeded random sample (seed {seed})"
    return out


def _sample_note(n: int | None, total: int | None, settings: dict) -> str:
    a = _sample_args(n, total, settings)
    if "items_in_source" in a and a.get("items", 0) < a["items_in_source"]:
        return f"{a['items']} of {a['items_in_source']} items ({a['sample']})"
    return f"{a.get('items', '?')} items" + (" (the whole source)" if "items_in_source" in a else "")


def eval_result_entries(report: dict | None) -> dict[str, list]:
    """``.eval_results/<task>.yaml`` entries: the pruned model's accuracy on tasks that are Hub benchmark datasets."""
    from huggingface_hub import EvalResultEntry

    files: dict[str, list] = {}
    report = normalize_report(report) if report else report
    for task, by_label in ((report or {}).get("tasks") or {}).items():
        p = by_label.get("pruned") or {}
        if task not in DATASETS or p.get("acc") is None:
            continue
        ds = DATASETS[task]
        source = ((report or {}).get("task_sources") or {}).get(task) or {}
        prompt = {"lm-eval": "lm-eval's stock prompt", "as stored": "the task file's own prompt"}.get(
            source.get("prompts"), "hf-streamline 0.1's prompt (not lm-eval's)")
        note = (f"zero-shot, {prompt}, hf-streamline log-likelihood scorer, acc over "
                f"{_sample_note(p.get('n'), source.get('items'), (report or {}).get('settings') or {})}")
        if p.get("acc_norm") is not None:
            note += f" (acc_norm {p['acc_norm']:.4f})"
        files[f"{task}.yaml"] = [EvalResultEntry(dataset_id=ds[0], task_id=ds[1] or "default",
                                                 value=round(float(p["acc"]), 4), notes=note)]
    return files


def card_data(ctx: dict, report: dict | None, extra: dict):
    from huggingface_hub import ModelCardData

    plan: StreamlinePlan = ctx["plan"]
    tags = list(TAGS) + [plan.method] + ([plan.metric] if plan.metric else [])
    if ctx["remote_code"]:
        tags += ["custom_code"]
    tags += [t for t in (extra.get("tags") or []) if t not in tags]
    evals = _model_index(ctx, report)
    datasets = None
    src = (plan.calibration or {}).get("source") or ""
    if src.startswith("dataset:"):
        datasets = [src.split(":")[1]]
    data = ModelCardData(
        base_model=plan.base_model if ctx["base_is_hub"] else None,
        base_model_relation=ctx["base_model_relation"],
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys(tags)),
        datasets=datasets,
        language=extra.get("language"),
        model_name=ctx["model_name"],
        eval_results=evals or None,
        **ctx["license"],
        streamline=_streamline_summary(plan),
    )
    return data
