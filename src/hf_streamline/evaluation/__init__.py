"""Evaluation people can trust: zero-shot tasks scored like lm-eval-harness, LLM-Streamline's stability, agreement
with the dense model, speed and size, and a report (JSON + Markdown + PNGs).  See docs/evaluation.md."""

from .agreement import next_token_agreement, same_prediction_rate, task_same_prediction_rate
from .lm_eval_bridge import compare_with_lm_eval, lm_eval_available, make_hflm, run_lm_eval, write_lm_eval_tasks
from .multiple_choice import LoglikelihoodScorer, TaskResult, encode_pair, evaluate_task, evaluate_tasks, mean_stderr
from .report import load_report, render_markdown, write_report
from .speed import measure_speed, parameter_counts
from .stability import compute_stability, reference_code_stability, stability_weights, task_stability
from .suite import EvaluationConfig, EvaluationResult, evaluate_models
from .tasks import (TASKS, HubSource, Item, Task, TaskSpec, get_task_spec, load_jsonl_task, register_task, resolve_task,
                    subsample_indices)

__all__ = [
    "EvaluationConfig", "EvaluationResult", "HubSource", "Item", "LoglikelihoodScorer", "TASKS", "Task", "TaskResult",
    "TaskSpec", "compare_with_lm_eval", "compute_stability", "encode_pair", "evaluate_models", "evaluate_task",
    "evaluate_tasks", "get_task_spec", "lm_eval_available", "load_jsonl_task", "load_report", "make_hflm",
    "mean_stderr", "measure_speed", "next_token_agreement", "parameter_counts", "reference_code_stability",
    "register_task", "render_markdown", "resolve_task", "run_lm_eval", "same_prediction_rate", "stability_weights",
    "subsample_indices", "task_same_prediction_rate", "task_stability", "write_lm_eval_tasks", "write_report",
]
