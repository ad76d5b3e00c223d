"""Evaluation people can trust: zero-shot tasks scored like lm-eval-harness, LLM-Streamline's stability, agreement
with the dense model, speed and size, and a report (JSON + Markdown + PNGs).  See docs/evaluation.md.

The names load on first use (PEP 562): the command line reads the task registry (``evaluation.tasks``, torch-free)
while it builds its parser, without importing the scorers, the report or lm-eval's bridge."""

from ..lazy import lazy_namespace

_LAZY = {
    "next_token_agreement": "agreement",
    "same_prediction_rate": "agreement",
    "task_same_prediction_rate": "agreement",
    "compare_with_lm_eval": "lm_eval_bridge",
    "lm_eval_available": "lm_eval_bridge",
    "make_hflm": "lm_eval_bridge",
    "run_lm_eval": "lm_eval_bridge",
    "write_lm_eval_tasks": "lm_eval_bridge",
    "LoglikelihoodScorer": "multiple_choice",
    "TaskResult": "multiple_choice",
    "encode_pair": "multiple_choice",
    "evaluate_task": "multiple_choice",
    "evaluate_tasks": "multiple_choice",
    "mean_stderr": "multiple_choice",
    "load_report": "report",
    "render_markdown": "report",
    "write_report": "report",
    "measure_speed": "speed",
    "parameter_counts": "speed",
    "compute_stability": "stability",
    "reference_code_stability": "stability",
    "stability_weights": "stability",
    "task_stability": "stability",
    "EvaluationConfig": "suite",
    "EvaluationResult": "suite",
    "evaluate_models": "suite",
    "TASKS": "tasks",
    "HubSource": "tasks",
    "Item": "tasks",
    "Task": "tasks",
    "TaskSpec": "tasks",
    "get_task_spec": "tasks",
    "load_jsonl_task": "tasks",
    "register_task": "tasks",
    "resolve_task": "tasks",
    "subsample_indices": "tasks",
}


__getattr__, __dir__ = lazy_namespace(__name__, _LAZY, globals(), submodules=True)

__all__ = sorted(_LAZY)
