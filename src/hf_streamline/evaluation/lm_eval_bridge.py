"""Run lm-eval-harness (``lm_eval``, optional) on our models and on our tasks, offline.

- ``make_hflm``: an ``lm_eval.models.huggingface.HFLM`` around a model object (any causal LM, including custom classes
  such as ``StreamlineForCausalLM``) or a folder / Hub id that ``AutoModelForCausalLM`` loads (``trust_remote_code``
  is passed through);
- ``write_lm_eval_tasks``: our tasks (the selected items) as lm-eval YAML task configs over local JSON-lines files
  (``dataset_path: json``), loaded with ``TaskManager(include_path=..., include_defaults=False)`` -- no network;
- ``run_lm_eval``: both together, returning lm-eval's metrics and its per-item log-likelihoods;
- ``compare_with_lm_eval``: our scorer against lm-eval on the same items.

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
from .tasks import Task, resolve_task, subsample_indices

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


def write_lm_eval_tasks(tasks: Sequence[Task], folder: str | os.PathLike) -> dict[str, str]:
    """Write every task's items (``Task.items``, e.g. after ``Task.select``) and an lm-eval YAML config into
    ``folder``; returns ``{our task name: lm-eval task name}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for task in tasks:
        name = PREFIX + "".join(c if c.isalnum() or c == "_" else "_" for c in task.name)
        data = folder / f"{name}.jsonl"
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


def run_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[Any], limit: int | None = None, seed: int = 0,
                batch_size: int = 8, task_dir: str | None = None, trust_remote_code: bool = False,
                device: str | None = None, lm: Any = None) -> dict[str, dict[str, Any]]:
    """Evaluate with lm-eval's ``simple_evaluate`` on the same seeded items our scorer uses.

    Returns ``{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "indices", "loglikelihoods",
    "seconds"}}`` -- ``loglikelihoods[i]`` lists item ``i``'s per-request log-likelihoods as lm-eval computed them.
    """
    _require()
    import lm_eval
    from lm_eval.tasks import TaskManager

    loaded = [resolve_task(t, task_dir) for t in tasks]
    selected, indices = [], {}
    for t in loaded:
        idx = subsample_indices(len(t), limit, seed)
        indices[t.name] = [t.items[i].index for i in idx]
        selected.append(Task(t.spec, [t.items[i] for i in idx], t.source))
    lm = lm or make_hflm(model, tokenizer, batch_size=batch_size, device=device, trust_remote_code=trust_remote_code)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hfs-lm-eval-") as tmp:
        names = write_lm_eval_tasks(selected, tmp)
        tm = TaskManager(include_path=tmp, include_defaults=False)
        for task in selected:
            name = names[task.name]
            t0 = time.perf_counter()
            res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=tm, log_samples=True,
                                          bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
                                          torch_random_seed=seed)
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


def compare_with_lm_eval(model: Any, tokenizer: Any, task: Any, limit: int | None = None, seed: int = 0,
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
