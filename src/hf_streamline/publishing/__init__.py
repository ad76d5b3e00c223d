"""Publishing: model cards rendered from the plan and the evaluation report, and a one-commit ``push_to_hub``."""

from .card import EVAL_RESULTS_DIR, render_model_card, template_dir, write_eval_results, write_model_card
from .folder import CARD_FILENAME, is_remote_code_model, load_report
from .metadata import DATASETS, eval_result_entries
from .citations import CITATIONS, citations_for_plan, register_citation
from .push import PushResult, collect_files, push_to_hub

__all__ = ["CARD_FILENAME", "CITATIONS", "DATASETS", "EVAL_RESULTS_DIR", "PushResult", "citations_for_plan",
           "collect_files", "eval_result_entries", "is_remote_code_model", "load_report", "register_citation",
           "render_model_card", "template_dir", "write_eval_results", "write_model_card", "push_to_hub"]
