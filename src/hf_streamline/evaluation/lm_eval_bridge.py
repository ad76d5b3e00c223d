"""Run lm-eval-harness (``lm_eval``, optional) on our models and on our tasks, offline.

- ``make_hflm``: an ``lm_eval.models.huggingface.HFLM`` around a model object (any causal LM, including custom classes
  such as ``StreamlineForCausalLM``) or a folder / Hub id that ``AutoModelForCausalLM`` loads (``trust_remote_code``
  is passed through);
- ``write_lm_eval_tasks``: our tasks (the selected items) as lm-eval YAML task configs over local JSON-lines files
  (``dataset_path: json``), loaded with ``TaskManager(include_path=..., include_defaults=False)`` -- no network;
- ``run_lm_eval``: both together, returning lm-eval's metrics and its per-item log-likelihoods;
- ``compare_with_lm_eval``: our scorer against lm-eval on the same items;
- ``task_manager`` / ``expand_lm_eval_name`` / ``load_lm_eval_tasks`` / ``task_from_lm_eval``: any lm-eval task, group
  or tag by name (or an lm-eval YAML under ``--include-path``) as our Task, built from lm-eval's own requests;
- ``run_generative``: an lm-eval ``generate_until`` task, generated and scored by lm-eval on our model.

Registered tasks are exported with lm-eval's *stock* YAML ``include``d unchanged over their Hub-schema rows (a local
``dataset_path``), so lm-eval builds the requests from its own templates; plain files with our column configs.

The task configs use column names (``doc_to_text: query``) rather than Jinja templates: Jinja drops a trailing newline
(PIQA's stored queries end with one), and an integer ``gold`` column keeps lm-eval's "multiple inputs" mode for
partial scoring.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import StreamlineError
from ..utils import model_device
from .tasks import Task, resolve_task

PREFIX = "hfs_"


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def _require() -> None:
    if not lm_eval_available():
        raise StreamlineError("lm-eval-harness is not installed; `pip install lm_eval` to compare with it")


def make_hflm(model: Any, tokenizer: Any = None, batch_size: int = 8, device: str | None = None,
              trust_remote_code: bool = False, dtype: str | None = None, **kwargs: Any):
    """An lm-eval ``HFLM`` for a model object or a model folder / Hub id (backend forced to causal)."""
    _require()
    from lm_eval.models.huggingface import HFLM

    if isinstance(model, (str, os.PathLike)):
        kw: dict[str, Any] = dict(pretrained=str(model), backend="causal", batch_size=batch_size,
                                  trust_remote_code=trust_remote_code)
        if tokenizer is not None:
            kw["tokenizer"] = tokenizer
        if device is None:  # HFLM's own default is "cuda", which fails on CPU-only torch
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        kw["device"] = device
        if dtype is not None:
            kw["dtype"] = dtype
        return HFLM(**kw, **kwargs)
    if tokenizer is None:
        raise StreamlineError("make_hflm: pass the tokenizer together with a model object")
    return HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                device=str(device or model_device(model)), **kwargs)


_MANAGERS: dict[tuple[str | None, bool], Any] = {}


def task_manager(include_path: str | os.PathLike | None = None, defaults: bool = True):
    """lm-eval's ``TaskManager`` (its stock tasks, plus the YAML tasks under ``include_path``); built once per
    process and argument pair (indexing the stock tasks takes seconds)."""
    _require()
    from lm_eval.tasks import TaskManager

    key = (str(include_path) if include_path else None, defaults)
    if key not in _MANAGERS:
        if include_path is not None and not os.path.exists(include_path):
            raise StreamlineError("no such folder or file (give a folder of lm-eval task YAMLs)",
                                  argument="include_path", value=str(include_path))
        _MANAGERS[key] = TaskManager(include_path=str(include_path) if include_path else None,
                                     include_defaults=defaults)
    return _MANAGERS[key]


def expand_lm_eval_name(name: str, include_path: str | os.PathLike | None = None) -> list[str] | None:
    """What loading the lm-eval name ``name`` means, for :func:`~hf_streamline.evaluation.tasks.resolve_tasks`:
    ``None`` when lm-eval knows no such name; the member names of a tag or of a group whose members are plain task
    or group names (each can then be a registered task with local data); else ``[name]`` -- a task, or a group with
    per-member settings (few-shot counts, inline members) that only lm-eval's own loader applies."""
    from lm_eval.tasks._index import Kind

    entry = task_manager(include_path).task_index.get(name)
    if entry is None:
        return None
    if entry.kind == Kind.TAG:
        members = sorted(entry.tags)
    elif entry.kind == Kind.GROUP:
        members = list((entry.cfg or {}).get("task", []))
        if not all(isinstance(m, str) for m in members):
            return [name]
    else:
        return [name]
    out: list[str] = []
    for m in members:
        out.extend(expand_lm_eval_name(m, include_path) or [m])
    return list(dict.fromkeys(out))


def group_aggregation(name: str, include_path: str | os.PathLike | None = None) -> bool | None:
    """For an lm-eval group that reports an aggregate of ``acc`` (its ``aggregate_metric_list``), whether the mean
    is weighted by the members' sizes; ``None`` for a task, a tag or a group without an ``acc`` aggregate."""
    from lm_eval.tasks._index import Kind

    entry = task_manager(include_path).task_index.get(name)
    if entry is None or entry.kind != Kind.GROUP:
        return None
    aggs = (entry.cfg or {}).get("aggregate_metric_list") or []
    aggs = aggs if isinstance(aggs, list) else [aggs]
    for agg in aggs:
        if isinstance(agg, dict) and agg.get("metric") == "acc":
            return bool(agg.get("weight_by_size", True))
    return None


# the metrics our scorer computes exactly as lm-eval does, per output type
_SCORED_METRICS = {"multiple_choice": {"acc", "acc_norm"}, "loglikelihood": {"acc", "perplexity"}}


def _check_scorable(lm_task: Any, name: str, kind: str) -> None:
    """Refuse an lm-eval task whose score is not argmax log-likelihood (its own process_results, several gold
    answers, other metrics): our scorer would report a number lm-eval does not."""
    cfg = lm_task.config
    metrics = {m.get("metric") if isinstance(m, dict) else str(m) for m in (cfg.metric_list or [])}
    other = sorted(str(m) for m in metrics - _SCORED_METRICS[kind])
    why = ("it scores itself (process_results)" if callable(getattr(cfg, "process_results", None)) else
           "it has several gold answers" if getattr(lm_task, "multiple_target", 0) else
           f"it reports {', '.join(other)}" if other else None)
    if why:
        raise StreamlineError(f"lm-eval task {name!r}: {why}, which hf-streamline's scorer does not compute (it gives "
                              f"{' and '.join(sorted(_SCORED_METRICS[kind]))}); run it with lm-eval itself, e.g. "
                              "`lm_eval --model hf --model_args pretrained=DIR --tasks " + name + "`")


def task_from_lm_eval(lm_task: Any, name: str | None = None) -> Task:
    """Our :class:`Task` from an lm-eval task object: its own requests (``build_all_requests``), character for
    character, grouped by document, with lm-eval's gold index and ``acc_norm`` lengths (the choices' characters).
    ``multiple_choice`` (one or multiple inputs) and ``loglikelihood`` tasks; generative ones are refused."""
    from .tasks import Item, TaskSpec

    name = name or lm_task.config.task
    kind = lm_task.OUTPUT_TYPE
    if kind == "generate_until":  # generated and scored by lm-eval itself (run_generative)
        return Task(TaskSpec(name, "generate_until", "", description=f"lm-eval task {name}"), [], f"lm-eval:{name}",
                    lm_task)
    if kind not in ("multiple_choice", "loglikelihood"):
        raise StreamlineError(f"task {name!r} is an lm-eval {kind} task; hf-streamline evaluates multiple_choice, "
                              "loglikelihood and generate_until tasks")
    _check_scorable(lm_task, name, kind)
    lm_task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc: dict[int, list[Any]] = {}
    for inst in lm_task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    multiple_input = bool(getattr(lm_task, "multiple_input", False))
    items = []
    for doc_id in sorted(by_doc):
        insts = sorted(by_doc[doc_id], key=lambda i: i.idx)
        doc = insts[0].doc
        if kind == "loglikelihood":
            ctx, cont = insts[0].arguments[:2]
            items.append(Item(doc_id, [ctx], [cont], [max(len(cont), 1)], 0, hub=dict(doc)))
            continue
        choices = lm_task.doc_to_choice(doc)
        n = len(lm_task.doc_to_text(doc)) if multiple_input and isinstance(lm_task.doc_to_text(doc), list) else len(choices)
        insts = insts[:n]  # acc_mutual_info adds unconditional requests after the choices
        ctxs = [i.arguments[0] for i in insts]
        conts = [i.arguments[1] for i in insts]
        gold = lm_task.doc_to_text(doc) if multiple_input else lm_task.doc_to_target(doc)
        lens = [max(len(c), 1) for c in choices]  # lm-eval's completion_len: the choices (multiple input: contexts)
        if isinstance(gold, str):  # a label: its index; one that is not a choice scores as wrong, as in lm-eval
            gold = choices.index(gold) if gold in choices else -1
        gold = int(gold) if 0 <= int(gold) < len(choices) else -1
        items.append(Item(doc_id, ctxs, conts, lens, gold, hub=dict(doc)))
    if not items:
        raise StreamlineError(f"lm-eval task {name!r} has no items")
    spec = TaskSpec(name, "last_word" if kind == "loglikelihood" else ("partial" if multiple_input else "multiple_choice"),
                    "", description=f"lm-eval task {name}")
    return Task(spec, items, f"lm-eval:{name}")


def load_lm_eval_tasks(name: str, include_path: str | os.PathLike | None = None) -> list[Task]:
    """The lm-eval task ``name`` (or every task of the group / tag ``name``; or a task YAML file) as our Tasks."""
    tm = task_manager(include_path)
    if not os.path.isfile(name) and expand_lm_eval_name(name, include_path) is None:
        raise StreamlineError(f"unknown task {name!r}: lm-eval knows no task, group or tag of that name")
    try:
        loaded = tm.load([name])["tasks"]
    except Exception as exc:  # noqa: BLE001 - lm-eval / datasets raise many kinds (offline, missing, ...)
        raise StreamlineError(f"task {name!r}: lm-eval could not load it ({type(exc).__name__}: {exc}); offline, give "
                              "the data in an lm-eval YAML with a local dataset_path, and its folder here",
                              argument="include_path") from exc
    return [task_from_lm_eval(t, n) for n, t in loaded.items()]


def _yaml_for(task: Task, name: str, data_file: Path) -> str:
    import yaml

    spec = task.spec
    cfg: dict[str, Any] = {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test", "target_delimiter": spec.delimiter,
    }
    if spec.kind == "multiple_choice":
        cfg.update(output_type="multiple_choice", doc_to_text="query", doc_to_choice="choices", doc_to_target="gold",
                   metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}])
    elif spec.kind == "partial":
        cfg.update(output_type="multiple_choice", doc_to_text="gold", doc_to_choice="context_options",
                   doc_to_target="continuation",
                   metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    else:
        # lm-eval puts no target_delimiter in loglikelihood requests: the exported rows carry it in "target"
        cfg.update(output_type="loglikelihood", doc_to_text="context", doc_to_target="target",
                   metric_list=[{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                {"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


def stock_yaml(name: str) -> Path | None:
    """The YAML file of lm-eval's stock task ``name`` (None when lm-eval has no such task)."""
    from lm_eval.tasks._index import Kind

    entry = task_manager().task_index.get(name)
    return Path(entry.yaml_path) if entry is not None and entry.kind == Kind.TASK and entry.yaml_path else None


def _stock_yaml_for(name: str, stock: Path, data_file: Path) -> str:
    """lm-eval's stock task config (``include``d as it is: templates, choices, target, metrics) over local rows."""
    import yaml

    cfg = {"include": str(stock), "task": name, "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test", "validation_split": None,
           "training_split": None, "fewshot_split": None, "process_docs": None}
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


def write_lm_eval_tasks(tasks: Sequence[Task], folder: str | os.PathLike, stock: bool = True) -> dict[str, str]:
    """Write every task's items (``Task.items``, e.g. after ``Task.select``) and an lm-eval YAML config into
    ``folder``; returns ``{our task name: lm-eval task name}``.  A task whose items carry Hub-schema rows and whose
    name is an lm-eval stock task (every registered task) gets lm-eval's own stock YAML over those rows, so lm-eval
    builds its requests from its own templates; other tasks get a config over our request columns."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for task in tasks:
        name = PREFIX + "".join(c if c.isalnum() or c == "_" else "_" for c in task.name)
        data = folder / f"{name}.jsonl"
        base = stock_yaml(task.name) if stock and all(it.hub is not None for it in task.items) else None
        if base is not None:
            with open(data, "w", encoding="utf-8") as fh:
                for item in task.items:
                    fh.write(json.dumps(item.hub, ensure_ascii=False, default=str) + "\n")
            (folder / f"{name}.yaml").write_text(_stock_yaml_for(name, base, data.absolute()), encoding="utf-8")
            names[task.name] = name
            continue
        with open(data, "w", encoding="utf-8") as fh:
            for item in task.items:
                if item.row is None:
                    raise StreamlineError(f"task {task.name!r}: item {item.index} has no source row to export")
                row = dict(item.row)
                if task.spec.kind == "last_word":
                    row["target"] = task.spec.delimiter + row["continuation"]
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        (folder / f"{name}.yaml").write_text(_yaml_for(task, name, data.absolute()), encoding="utf-8")
        names[task.name] = name
    return names


def run_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[Any], limit: int | float | None = None,
                seed: int | None = None,
                batch_size: int = 8, task_dir: str | None = None, trust_remote_code: bool = False,
                device: str | None = None, lm: Any = None) -> dict[str, dict[str, Any]]:
    """Evaluate with lm-eval's ``simple_evaluate`` on the same items our scorer uses (``limit``/``seed`` as in
    :func:`~hf_streamline.evaluation.tasks.subsample_indices`).

    Returns ``{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "indices", "loglikelihoods",
    "seconds"}}`` -- ``loglikelihoods[i]`` lists item ``i``'s per-request log-likelihoods as lm-eval computed them.
    """
    _require()
    import lm_eval
    from lm_eval.tasks import TaskManager

    loaded = [resolve_task(t, task_dir) for t in tasks]
    selected, indices = [], {}
    for t in loaded:
        sub = t.select(limit, seed)
        indices[t.name] = [it.index for it in sub.items]
        selected.append(sub)
    lm = lm or make_hflm(model, tokenizer, batch_size=batch_size, device=device, trust_remote_code=trust_remote_code)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hfs-lm-eval-") as tmp:
        names = write_lm_eval_tasks(selected, tmp)
        tm = TaskManager(include_path=tmp, include_defaults=False)
        for task in selected:
            name = names[task.name]
            t0 = time.perf_counter()
            res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=tm, log_samples=True,
                                          bootstrap_iters=1000, random_seed=seed or 0,
                                          numpy_random_seed=seed or 0, torch_random_seed=seed or 0)
            seconds = time.perf_counter() - t0
            metrics = res["results"][name]
            samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
            lls = [[float(r[0]) for r in s["filtered_resps"]] if task.spec.kind != "last_word"
                   else [float(s["filtered_resps"][0][0])] for s in samples]
            get = lambda k: metrics.get(f"{k},none")  # noqa: E731
            acc, acc_se = get("acc"), get("acc_stderr")
            acc_norm = get("acc_norm") if get("acc_norm") is not None else acc
            acc_norm_se = get("acc_norm_stderr") if get("acc_norm") is not None else acc_se
            out[task.name] = {"acc": acc, "acc_stderr": acc_se, "acc_norm": acc_norm, "acc_norm_stderr": acc_norm_se,
                              "n": len(samples), "indices": indices[task.name], "loglikelihoods": lls,
                              "seconds": seconds, "items_per_s": len(samples) / seconds if seconds > 0 else None}
            if get("perplexity") is not None:
                out[task.name]["perplexity"] = get("perplexity")
    return out


def compare_with_lm_eval(model: Any, tokenizer: Any, task: Any, limit: int | float | None = None,
                         seed: int | None = None,
                         batch_size: int = 8, task_dir: str | None = None, ours: Any = None,
                         lm: Any = None) -> dict[str, Any]:
    """Our scorer and lm-eval on the same items: largest log-likelihood difference, accuracies, timing."""
    from .multiple_choice import evaluate_task

    task = resolve_task(task, task_dir)
    t0 = time.perf_counter()
    ours = ours or evaluate_task(model, tokenizer, task, limit=limit, seed=seed, batch_size=batch_size, progress=False)
    ours_s = time.perf_counter() - t0
    theirs = run_lm_eval(model, tokenizer, [task], limit=limit, seed=seed, batch_size=batch_size, lm=lm)[task.name]
    if theirs["indices"] != ours.indices:
        raise StreamlineError("compare_with_lm_eval: the two runs covered different items")
    diffs = [abs(a - b) for la, lb in zip(ours.loglikelihoods, theirs["loglikelihoods"]) for a, b in zip(la, lb)]
    return {"task": task.name, "n": ours.n, "max_abs_loglikelihood_diff": max(diffs),
            "acc": ours.acc, "acc_lm_eval": theirs["acc"], "acc_norm": ours.acc_norm, "acc_norm_lm_eval": theirs["acc_norm"],
            "seconds": ours_s, "seconds_lm_eval": theirs["seconds"],
            "items_per_s": ours.n / ours_s if ours_s > 0 else None, "items_per_s_lm_eval": theirs["items_per_s"]}


def run_generative(model: Any, tokenizer: Any, task: Task, limit: int | float | None = None, batch_size: int = 8,
                   lm: Any = None) -> dict[str, Any]:
    """An lm-eval ``generate_until`` task (e.g. ``gsm8k``) on ``model``, generated and scored by lm-eval itself
    (``simple_evaluate`` with ``HFLM``; ``limit`` as lm-eval's).  Returns ``{"metrics": {name: value}, "n",
    "seconds"}``."""
    _require()
    import lm_eval

    if not task.generative or task.lm_task is None:
        raise StreamlineError(f"task {task.name!r} is not an lm-eval generate_until task")
    lm = lm or make_hflm(model, tokenizer, batch_size=batch_size)
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=[task.lm_task], limit=limit, log_samples=True, bootstrap_iters=0,
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                  task_manager=task_manager())
    seconds = time.perf_counter() - t0
    name = next(iter(res["results"]))
    metrics = {}
    for key, v in res["results"][name].items():  # "exact_match,none" -> exact_match; other filters keep their name
        if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in key and "," in key:
            metric, filt = key.split(",", 1)
            metrics[metric if filt == "none" else f"{metric} ({filt})"] = float(v)
    return {"metrics": metrics, "n": len((res.get("samples") or {}).get(name) or []), "seconds": seconds}
