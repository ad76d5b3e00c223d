"""What a model card's body says: the template context built from the plan, the evaluation report and the saved folder
(operations in words, each layer's fate, scores, healing, the results table, the command that reproduces the model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..formatting import number
from ..plan import StreamlinePlan
from .citations import citations_for_plan
from .folder import (HUB_ID_RE, base_model_license, base_model_relation, card_folder_name, count_parameters,
                     is_remote_code_model, is_structural, layer_sizes, read_config)
from .metadata import DATASETS, text_key, text_label

PLACEHOLDER_NAMESPACE = "your-username"

METHOD_TITLES = {
    "remove": "layer removal",
    "merge": "layer merging",
    "replace": "block replacement (LLM-Streamline)",
    "replace_linear": "training-free block replacement by a fitted linear map (ReplaceMe)",
}


# ----------------------------------------------------------------------------------------------------------------------
# Context
# ----------------------------------------------------------------------------------------------------------------------
def _layer_fates(plan: StreamlinePlan) -> dict[int, str]:
    """What became of each layer, operation by operation (each says it: ``PlanOperation.fates``); a layer that lost
    both sub-blocks says so once."""
    fates: dict[int, str] = {}
    for op in plan.operations:
        for i, fate in op.fates(plan).items():
            before = fates.get(i, "")
            if before.startswith("kept; no ") and fate.startswith("kept; no "):
                parts = {p.removesuffix(" sub-block") for p in (before[9:], fate[9:])}
                fate = f"kept; no {' and no '.join(sorted(parts))} sub-block"
            fates[i] = fate
    for i in plan.removed_layers:
        fates.setdefault(int(i), "removed")
    return fates


def _score_columns(plan: StreamlinePlan) -> tuple[list[dict], list[list[str]]]:
    """One column per metric in the plan's scores: the per-layer value, or the block value for the removed size."""
    from ..scores.base import ScoreResult

    L = plan.num_layers_before
    metrics, columns = [], []
    order = ([plan.metric] if plan.metric in plan.scores else []) + [m for m in plan.scores if m != plan.metric]
    n_removed = len(plan.removed_layers)
    for name in order:
        try:
            sr = ScoreResult.from_dict(plan.scores[name])
        except (KeyError, TypeError):
            continue
        values, note = None, None
        if sr.per_layer is not None:
            values = sr.per_layer
        elif 1 in sr.per_block:
            values = sr.per_block[1]
        elif n_removed in sr.per_block:
            values = sr.per_block[n_removed]
            note = f"block of {n_removed} starting here"
        elif sr.per_block:
            n = sorted(sr.per_block)[0]
            values, note = sr.per_block[n], f"block of {n} starting here"
        if values is None:
            continue
        direction = "higher = more redundant" if sr.higher_is_redundant else "lower = less important"
        note = f"{note}; {direction}" if note else direction
        metrics.append({"name": f"`{name}`", "note": note})
        columns.append([number(float(values[i])) if i < len(values) and values[i] is not None else "—"
                        for i in range(L)])
    return metrics, columns


def _healing_line(h: Any) -> str:
    if not isinstance(h, dict):
        return str(h)
    parts = [f"**{h.get('type', 'training')}**"]
    for k, v in h.items():
        if k in ("type", "loss_curve", "log_history") or v is None or isinstance(v, (dict, list)) and len(str(v)) > 120:
            continue
        parts.append(f"{k}: {number(v) if isinstance(v, float) else v}")
    curve = h.get("loss_curve") or []
    losses = [e.get("loss") for e in curve if isinstance(e, dict) and e.get("loss") is not None]
    if len(losses) >= 2:
        parts.append(f"training loss {number(losses[0])} → {number(losses[-1])}")
    return "; ".join(parts)


def _reproduce(plan: StreamlinePlan, out_name: str) -> dict[str, str | None]:
    base = plan.base_model
    apply = f"hf-streamline apply streamline_plan.json --model {base} --output {out_name}"
    cli = None
    cal = plan.calibration or {}
    if plan.method == "remove" and all(op.type == "remove" for op in plan.operations):
        parts = ["hf-streamline prune", f"--model {base}"]
        if cal.get("source"):
            parts.append(f"--calibration {cal['source']}")
            for key, flag in (("n_samples", "--samples"), ("seq_len", "--seq-len"), ("seed", "--seed"),
                              ("sampler", "--sampler")):
                if cal.get(key) is not None:
                    parts.append(f"{flag} {cal[key]}")
        if plan.selection == "user" or not plan.metric:
            parts.append(f"--layers {','.join(str(i) for i in plan.removed_layers)}")
        else:
            parts.append(f"--metric {plan.metric}")
            target = plan.extra.get("target") or {"layers": len(plan.removed_layers)}
            if target.get("layers") is not None:
                parts.append(f"--remove {target['layers']}")
            elif target.get("ratio") is not None:
                parts.append(f"--ratio {target['ratio']}")
            elif target.get("param_ratio") is not None:
                parts.append(f"--param-ratio {target['param_ratio']}")
            if plan.selection == "block":
                parts.append("--block")
            elif plan.selection == "iterative":
                parts.append("--iterative")
                step = len(plan.steps[0]["removed"]) if plan.steps and plan.steps[0].get("removed") else 1
                parts.append(f"--step {step}")
            protect = plan.extra.get("protect") or {}
            if protect.get("first"):
                parts.append(f"--protect-first {protect['first']}")
            if protect.get("last"):
                parts.append(f"--protect-last {protect['last']}")
        parts.append(f"--output {out_name}")
        cli = " \\\n  ".join(parts)
    elif plan.extra.get("command"):
        cli = str(plan.extra["command"])
    return {"apply": apply, "cli": cli}


def _task_rows(report: dict) -> tuple[list[dict], bool]:
    tasks = report.get("tasks") or {}
    pair = (report.get("pairs") or {}).get("pruned_vs_dense") or {}
    stab = pair.get("stability") or {}
    effective = pair.get("stability_effective_questions") or {}
    rows = []

    def acc(r: dict | None, key: str) -> str:
        if not r or r.get(key) is None:
            return "—"
        err = r.get(f"{key}_stderr")
        return f"{r[key]:.4f}" + (f" ± {err:.4f}" if err is not None else "")

    for task, by_label in tasks.items():
        dense, pruned = by_label.get("dense"), by_label.get("pruned")
        n = (pruned or dense or {}).get("n")
        rows.append({"task": DATASETS[task][3] if task in DATASETS else task, "n": n if n is not None else "—",
                     "base_acc": acc(dense, "acc"), "acc": acc(pruned, "acc"),
                     "base_acc_norm": acc(dense, "acc_norm"), "acc_norm": acc(pruned, "acc_norm"),
                     "stability": (number(stab[task]) + (f" ({effective[task]:.1f})" if effective.get(task) is not None
                                                       else "")) if task in stab else "—"})
    return rows, bool(stab)


def _change(base: Any, new: Any) -> str:
    if base in (None, 0) or new is None:
        return "—"
    try:
        return f"{(float(new) / float(base) - 1) * 100:+.1f}%"
    except (TypeError, ValueError):
        return "—"


def build_context(folder: Path, plan: StreamlinePlan, report: dict | None, extra: dict, repo_id: str | None,
                  name: str | None = None, license_base: str | None = None) -> dict:
    """Everything the template renders.  ``name``: the model's folder name (the final output folder, not a staging
    folder); ``license_base``: where to read the base model's license (the base as it was loaded, maybe a folder)."""
    config = read_config(folder)
    remote_code = is_remote_code_model(config)
    folder_name = name or card_folder_name(folder)
    model_name = extra.get("model_name") or (repo_id.split("/")[-1] if repo_id else folder_name)
    base = plan.base_model
    base_is_hub = bool(HUB_ID_RE.match(base)) and not Path(base).exists()
    k, L = len(plan.removed_layers), plan.num_layers_before
    verb = {"remove": "removed", "merge": "merged away", "replace": "replaced",
            "replace_linear": "replaced"}.get(plan.method, "changed")
    summary = (f"`{base}` made shallower with hf-streamline: {k} of its {L} decoder layers "
               f"({100 * k / max(L, 1):.0f}% of the depth) were {verb}")
    if plan.method == "replace":
        n_mod = sum(op.added() for op in plan.operations if op.type == "replace")
        if n_mod:
            summary += f" by {n_mod} lightweight trained module{'s' if n_mod > 1 else ''}"
    if plan.method == "replace_linear":
        folded = sum(1 for op in plan.operations if op.type == "replace_linear" and op.folded)
        summary += (f" by {folded} linear map{'s' if folded != 1 else ''} fitted on calibration data and folded into "
                    "the preceding layers (training-free, ReplaceMe)" if folded else
                    " (the fitted linear maps did not help on held-out data, so the blocks were simply removed)")
    subs = [(op.unit, len(op.layers)) for op in plan.operations if op.type == "remove_sublayer"]
    if subs:
        what = ", ".join(f"{n} {unit} sub-block{'s' if n != 1 else ''}" for unit, n in subs)
        if k:
            summary += f", and {what} were removed from kept layers, leaving {plan.num_layers_after}."
        else:
            summary = (f"`{base}` made lighter with hf-streamline: {what} were removed from its {L} decoder layers "
                       "(every layer is kept).")
    else:
        summary += f", leaving {plan.num_layers_after}."
    adapter = (plan.extra or {}).get("adapter")
    if isinstance(adapter, dict) and (folder / "adapter_config.json").is_file():
        target = adapter.get("base_model_name_or_path") or base
        summary = (f"A LoRA adapter (peft) for the pruned model `{target}`. The pruned model: {summary}"
                   if is_structural(plan) else f"A LoRA adapter (peft) for `{base}`.")

    # size and speed
    counts = count_parameters(folder) or {}
    models = (report or {}).get("models") or {}
    dense_m, pruned_m = models.get("dense") or {}, models.get("pruned") or {}
    params = pruned_m.get("params") or counts.get("params")
    non_emb = pruned_m.get("non_embedding_params") or counts.get("non_embedding_params")
    base_params, base_non_emb = dense_m.get("params"), dense_m.get("non_embedding_params")
    base_computed = False
    if base_params is None and params and plan.operations and all(op.type == "remove" for op in plan.operations):
        per_layer = layer_sizes(folder)
        if per_layer and len(set(per_layer.values())) == 1 and len(per_layer) == plan.num_layers_after:
            n = next(iter(per_layer.values())) * len(plan.removed_layers)
            base_params, base_non_emb, base_computed = params + n, (non_emb + n) if non_emb else None, True
    size = {"params": params, "non_embedding": non_emb, "base_params": base_params, "base_non_embedding": base_non_emb,
            "base_computed": base_computed,
            "ratio": params / base_params if params and base_params else None,
            "non_embedding_ratio": non_emb / base_non_emb if non_emb and base_non_emb else None}

    # evaluation
    ppl_rows = []
    for text, by_label in ((report or {}).get("perplexity") or {}).items():
        d, p = by_label.get("dense"), by_label.get("pruned")
        ppl_rows.append({"text": text_label(text), "key": text_key(text), "base": number(d), "pruned": number(p),
                         "change": _change(d, p), "value": p})
    if not ppl_rows and isinstance(plan.evaluation.get("perplexity"), dict):
        e = plan.evaluation["perplexity"]
        if e.get("after") is not None or e.get("before") is not None:
            text = str(e.get("text") or "calibration")
            ppl_rows.append({"text": text_label(text), "key": text_key(text) if text != "calibration" else None,
                             "base": number(e.get("before")), "pruned": number(e.get("after")),
                             "change": _change(e.get("before"), e.get("after")), "value": e.get("after")})
    task_rows, has_stability = _task_rows(report or {})
    speed_rows = []
    speed = (report or {}).get("speed") or {}
    for key, name in (("prefill_tokens_per_s", "prefill (tokens/s)"), ("decode_tokens_per_s", "decode (tokens/s)")):
        d, p = (speed.get("dense") or {}).get(key), (speed.get("pruned") or {}).get(key)
        if d is not None or p is not None:
            speed_rows.append({"name": name, "base": number(d), "pruned": number(p),
                               "ratio": f"{p / d:.2f}×" if d and p else "—"})
    speed_note = (report or {}).get("speed_note") or (speed.get("note") if isinstance(speed.get("note"), str) else None) \
        or "as measured by the evaluation report, same machine for both"
    speed_left_out = None
    if speed_rows:
        from ..evaluation.speed import speed_verdict

        steady, why = speed_verdict({k: v for k, v in speed.items() if k in ("dense", "pruned")})
        if steady:
            speed_note += f"; {why}"
        else:  # a noisy figure stays out of the card (issue 14): say so instead
            speed_rows, speed_left_out = [], f"Speed was measured but is {why}."

    headline = []
    if ppl_rows:
        r = ppl_rows[0]
        headline.append({"name": f"perplexity, {r['text']}", "base": r["base"], "pruned": r["pruned"]})
    if task_rows:
        tasks = (report or {}).get("tasks") or {}
        accs = [(t.get("dense", {}).get("acc"), t.get("pruned", {}).get("acc")) for t in tasks.values()]
        if accs and all(a is not None and b is not None for a, b in accs):
            headline.append({"name": f"mean accuracy, {len(accs)} tasks", "base": f"{sum(a for a, _ in accs) / len(accs):.4f}",
                             "pruned": f"{sum(b for _, b in accs) / len(accs):.4f}"})
    for r in speed_rows:
        headline.append({"name": r["name"], "base": r["base"], "pruned": r["pruned"]})

    # layers
    fates = _layer_fates(plan)
    metrics, columns = _score_columns(plan)
    layer_rows = [{"index": i, "fate": fates.get(i, "kept"), "changed": i in fates,
                   "scores": [col[i] for col in columns]} for i in range(L)]

    # license
    lic = {k2: extra[k2] for k2 in ("license", "license_name", "license_link") if extra.get(k2)}
    if not lic:
        lic = (base_model_license(license_base) if license_base and license_base != base else None) \
            or base_model_license(base) or {}
    license_known = bool(lic.get("license"))
    if not license_known:
        lic = {"license": "other", "license_name": "same-as-base-model"}
        if base_is_hub:
            lic["license_link"] = f"https://huggingface.co/{base}"
        license_text = (f"`other` — the license of `{base}` could not be read offline; this model is a derivative of "
                        "it and carries the base model's license terms. Check them before use or redistribution.")
    else:
        license_text = f"`{lic['license']}` (carried over from the base model)"

    limitations = [
        f"Removing decoder layers removes capacity: expect this model to be weaker than `{base}`, most visibly on "
        "open-ended generation and multi-step reasoning, even where multiple-choice scores hold up.",
    ]
    if not plan.healing:
        limitations.append("No recovery training was applied after the structural change. Healing (LoRA, partial "
                           "fine-tuning of the last layers and `lm_head`, or distillation) usually recovers part of the "
                           "loss.")
    if plan.calibration and plan.calibration.get("source"):
        c = plan.calibration
        limitations.append(f"Layers were chosen on {c.get('n_samples', '?')} sequences of {c.get('seq_len', '?')} tokens "
                           f"from `{c['source']}`; other calibration text can choose other layers.")
    if not ppl_rows and not task_rows:
        limitations.append("This card records no evaluation of the model.")
    elif task_rows:
        limitations.append("Zero-shot accuracies are measured on the item counts shown; read them with their standard "
                           "errors.")
    if remote_code:
        limitations.append("Loading with `trust_remote_code=True` runs the `configuration_streamline.py` / "
                           "`modeling_streamline.py` files of this repository: review them first, or import "
                           "hf_streamline instead.")
    if not license_known:
        limitations.append("The license is set to `other` because the base model's license was not available offline.")
    limitations.append("The model inherits the base model's biases, limitations and intended uses.")
    limitations += [str(x) for x in (extra.get("limitations") or [])]

    healing = [_healing_line(h) for h in plan.healing]
    if extra.get("training") and not plan.healing:
        healing.append(_healing_line({"type": "training", **dict(extra["training"])}))

    load_id = repo_id or extra.get("repo_id") or f"{PLACEHOLDER_NAMESPACE}/{folder_name}"
    return {
        "model_name": model_name, "summary": extra.get("summary") or summary,
        "base_model": base, "base_model_link": f"https://huggingface.co/{base}" if base_is_hub else None,
        "base_is_hub": base_is_hub,
        "base_model_relation": base_model_relation(plan, folder, config) if base_is_hub else None,
        "method": plan.method, "method_title": METHOD_TITLES.get(plan.method, plan.method),
        "metric": plan.metric, "selection": plan.selection,
        "num_layers_before": L, "num_layers_after": plan.num_layers_after,
        "operation_lines": [op.describe(plan) for op in plan.operations] or ["No operation (the plan is empty)."],
        "layer_rows": layer_rows, "score_metrics": metrics,
        "steps": [{"step": s.get("step"), "removed": s.get("removed", [])} for s in plan.steps],
        "healing": healing, "calibration": plan.calibration,
        "size": size, "headline": headline,
        "perplexity_rows": ppl_rows, "task_rows": task_rows, "has_stability": has_stability,
        "speed_rows": speed_rows, "speed_note": speed_note, "speed_left_out": speed_left_out,
        "remote_code": remote_code, "architecture": (config.get("architectures") or ["causal LM"])[0],
        "load_id": load_id, "reproduce": _reproduce(plan, folder_name),
        "limitations": limitations, "citations": citations_for_plan(plan),
        "versions": {"hf_streamline": None, "transformers": None, "torch": None, **(plan.versions or {})}, "license": lic, "license_text": license_text,
        "report": report, "config": config, "plan": plan,
    }
