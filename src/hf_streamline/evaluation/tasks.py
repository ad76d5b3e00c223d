"""Zero-shot tasks: a registry of task specs, JSON-lines loaders with line-level validation, ``datasets`` loaders.

Three task kinds, scored the way lm-eval-harness scores them (see ``multiple_choice.py``):

- ``multiple_choice`` -- rows ``{"query", "choices": [...], "gold": i}``.  One request per choice:
  ``(query, delimiter + choice)``.  ``acc_norm`` divides by ``len(choice)`` in characters (lm-eval's
  ``completion_len``: the choice as stored, without the delimiter).
- ``partial`` (WinoGrande "partial scoring") -- rows ``{"context_options": [a, b], "continuation", "gold"}``.  One
  request per option: ``(context_option, delimiter + continuation)``; only the continuation is scored, so
  ``acc_norm`` equals ``acc`` (the scored text is the same for every option).
- ``last_word`` (LAMBADA) -- rows ``{"context", "continuation"}``.  One request ``(context, delimiter +
  continuation)``; ``acc`` = the continuation is the greedy continuation token by token (lm-eval's ``is_greedy``);
  the task also reports the continuation perplexity.

The text of a choice is appended to the query exactly as stored (a leading space, if any, belongs to the choice), unless
the task sets a ``delimiter``.  The built-in specs set ``delimiter=" "`` like lm-eval's default ``target_delimiter``
(``piqa``'s stored query already ends with a newline, so it uses ``""``).  A plain JSON-lines file whose name is not a
registered task uses no delimiter; give one with ``NAME=FILE`` (a registered name) or a YAML/JSON task config.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import StreamlineError
from ..utils import read_jsonl_rows

KINDS = ("multiple_choice", "partial", "last_word")
# kind -> the fields every row must have
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("query", "choices", "gold"),
    "partial": ("context_options", "continuation", "gold"),
    "last_word": ("context", "continuation"),
}
EVAL_DIR_ENV = "HF_STREAMLINE_EVAL_DIR"


@dataclass
class HubSource:
    """Where a registered task lives on the Hugging Face Hub (for users with network access)."""

    dataset: str = field(metadata={"help": "datasets id, e.g. allenai/ai2_arc."})
    config: str | None = field(default=None, metadata={"help": "dataset config name."})
    split: str = field(default="test", metadata={"help": "split to evaluate."})
    convert: str = field(default="", metadata={"help": "name of the row converter in HUB_CONVERTERS."})


@dataclass
class TaskSpec:
    """One task: how its rows are scored and where they come from."""

    name: str = field(metadata={"help": "task name used in reports."})
    kind: str = field(default="multiple_choice", metadata={"help": "multiple_choice | partial | last_word."})
    delimiter: str = field(default="", metadata={"help": "text put between the query and each choice ('' = as stored)."})
    path: str | None = field(default=None, metadata={"help": "local JSON-lines file (overrides the Hub source)."})
    hub: HubSource | None = field(default=None, metadata={"help": "datasets source used when there is no local file."})
    description: str = field(default="", metadata={"help": "one line for docs and reports."})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StreamlineError(f"task {self.name!r}: kind {self.kind!r} is not known; use one of {list(KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Item:
    """One question, expanded into lm-eval-style ``(context, continuation)`` requests."""

    index: int  # position in the task's source (0-based); line number = index + 1 for files without blank lines
    contexts: list[str]
    continuations: list[str]
    norm_lengths: list[int]  # characters used by acc_norm, one per request
    gold: int
    line: int | None = None  # 1-based line in the source file, for messages
    row: dict[str, Any] | None = field(default=None, repr=False)  # the validated row (for exporting to lm-eval)

    @property
    def num_requests(self) -> int:
        return len(self.contexts)


@dataclass
class Task:
    spec: TaskSpec
    items: list[Item]
    source: str  # file path or datasets id, for reports

    @property
    def name(self) -> str:
        return self.spec.name

    def __len__(self) -> int:
        return len(self.items)

    def select(self, limit: int | None = None, seed: int = 0) -> "Task":
        """A seeded random subset of ``limit`` items (kept in source order); all items when ``limit`` is None."""
        idx = subsample_indices(len(self.items), limit, seed)
        return Task(self.spec, [self.items[i] for i in idx], self.source)


# ---------------------------------------------------------------------------------------------------------------------
# registry

TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add (or replace) a task in the registry; returns it so modules can register at import time."""
    TASKS[spec.name] = spec
    return spec


def get_task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise StreamlineError(f"unknown task {name!r}; registered tasks are {sorted(TASKS)}, or give a .jsonl file") from None


# row converters from the Hub datasets to the JSON-lines formats of the shared files
HUB_CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def register_converter(name: str):
    def deco(fn):
        HUB_CONVERTERS[name] = fn
        return fn

    return deco


@register_converter("arc")
def _arc(row: dict[str, Any]) -> dict[str, Any]:
    labels = list(row["choices"]["label"])
    return {"query": f"Question: {row['question']}", "choices": list(row["choices"]["text"]),
            "gold": labels.index(row["answerKey"])}


@register_converter("boolq")
def _boolq(row: dict[str, Any]) -> dict[str, Any]:
    question = row["question"].strip()
    question = question if question.endswith("?") else question + "?"
    answer = row.get("answer", row.get("label"))
    return {"query": f"Passage: {row['passage']}\nQuestion: {question}", "choices": ["no", "yes"], "gold": int(bool(answer))}


@register_converter("piqa")
def _piqa(row: dict[str, Any]) -> dict[str, Any]:
    return {"query": f"Question: {row['goal']}\n", "choices": [row["sol1"], row["sol2"]], "gold": int(row["label"])}


@register_converter("openbookqa")
def _openbookqa(row: dict[str, Any]) -> dict[str, Any]:
    labels = list(row["choices"]["label"])
    return {"query": row["question_stem"], "choices": list(row["choices"]["text"]), "gold": labels.index(row["answerKey"].strip())}


@register_converter("copa")
def _copa(row: dict[str, Any]) -> dict[str, Any]:
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    lower = lambda s: s[:1].lower() + s[1:]  # noqa: E731
    return {"query": f"{row['premise'].strip()[:-1]}, {connector}", "choices": [lower(row["choice1"]), lower(row["choice2"])],
            "gold": int(row["label"])}


@register_converter("winogrande")
def _winogrande(row: dict[str, Any]) -> dict[str, Any]:
    sentence = row["sentence"]
    cut = sentence.index("_")
    return {"context_options": [sentence[:cut] + row["option1"], sentence[:cut] + row["option2"]],
            "continuation": sentence[cut + 1:].strip(), "gold": int(row["answer"]) - 1}


@register_converter("lambada")
def _lambada(row: dict[str, Any]) -> dict[str, Any]:
    context, last = row["text"].rsplit(" ", 1)
    return {"context": context, "continuation": last}


for _spec in (
    TaskSpec("arc_easy", "multiple_choice", " ", hub=HubSource("allenai/ai2_arc", "ARC-Easy", "test", "arc"),
             description="ARC-Easy grade-school science questions, 4 choices"),
    TaskSpec("arc_challenge", "multiple_choice", " ", hub=HubSource("allenai/ai2_arc", "ARC-Challenge", "test", "arc"),
             description="ARC-Challenge, the harder ARC questions, 4 choices"),
    TaskSpec("boolq", "multiple_choice", " ", hub=HubSource("google/boolq", None, "validation", "boolq"),
             description="BoolQ yes/no questions about a passage"),
    TaskSpec("piqa", "multiple_choice", "", hub=HubSource("baber/piqa", None, "validation", "piqa"),
             description="PIQA physical commonsense, 2 solutions (query ends with a newline, so no delimiter)"),
    TaskSpec("openbook_qa", "multiple_choice", " ", hub=HubSource("allenai/openbookqa", "main", "test", "openbookqa"),
             description="OpenBookQA elementary science, 4 choices"),
    TaskSpec("copa", "multiple_choice", " ", hub=HubSource("aps/super_glue", "copa", "validation", "copa"),
             description="COPA cause/effect, 2 choices"),
    TaskSpec("winogrande", "partial", " ", hub=HubSource("allenai/winogrande", "winogrande_xl", "validation", "winogrande"),
             description="WinoGrande pronoun resolution, partial scoring"),
    TaskSpec("lambada_openai", "last_word", " ", hub=HubSource("EleutherAI/lambada_openai", "default", "test", "lambada"),
             description="LAMBADA (OpenAI version), last-word accuracy"),
):
    register_task(_spec)


# ---------------------------------------------------------------------------------------------------------------------
# rows -> items


def detect_kind(row: dict[str, Any]) -> str:
    """The task kind whose fields the row has (multiple-choice first)."""
    if not isinstance(row, dict):
        raise StreamlineError("a task row must be a JSON object")
    for kind in ("multiple_choice", "partial", "last_word"):
        if all(k in row for k in KIND_FIELDS[kind]):
            return kind
    if "choices" in row or "query" in row:
        return "multiple_choice"
    if "context_options" in row:
        return "partial"
    if "context" in row or "continuation" in row:
        return "last_word"
    raise StreamlineError(
        f"a task row has fields {sorted(row)}; expected {{query, choices, gold}} (multiple choice), "
        f"{{context_options, continuation, gold}} (partial scoring) or {{context, continuation}} (last word)"
    )


def _gold(row: dict[str, Any], n: int, where: str) -> int:
    gold = row["gold"]
    if isinstance(gold, bool) or not isinstance(gold, int):
        if isinstance(gold, str) and gold.strip().lstrip("-").isdigit():
            gold = int(gold)
        else:
            raise StreamlineError(f"{where}: gold must be an integer index, got {gold!r}")
    if not 0 <= gold < n:
        raise StreamlineError(f"{where}: gold {gold} is out of range for {n} choices (valid: 0..{n - 1})")
    return gold


def _strings(value: Any, name: str, where: str, min_len: int) -> list[str]:
    if not isinstance(value, list) or len(value) < min_len or not all(isinstance(v, str) for v in value):
        raise StreamlineError(f"{where}: {name} must be a list of at least {min_len} strings, got {value!r:.80}")
    return value


def row_to_item(row: dict[str, Any], spec: TaskSpec, index: int, where: str, line: int | None = None) -> Item:
    """Validate one row against ``spec.kind`` and expand it into requests; ``where`` names it in errors."""
    if not isinstance(row, dict):
        raise StreamlineError(f"{where}: a task row must be a JSON object, got {type(row).__name__}")
    missing = [k for k in KIND_FIELDS[spec.kind] if k not in row]
    if missing:
        raise StreamlineError(
            f"{where}: missing field {', '.join(repr(m) for m in missing)} (a {spec.kind} row needs "
            f"{', '.join(KIND_FIELDS[spec.kind])})"
        )
    d = spec.delimiter
    if spec.kind == "multiple_choice":
        if not isinstance(row["query"], str):
            raise StreamlineError(f"{where}: query must be a string")
        choices = _strings(row["choices"], "choices", where, 2)
        gold = _gold(row, len(choices), where)
        return Item(index, [row["query"]] * len(choices), [d + c for c in choices], [max(len(c), 1) for c in choices],
                    gold, line, {"query": row["query"], "choices": choices, "gold": gold})
    if spec.kind == "partial":
        options = _strings(row["context_options"], "context_options", where, 2)
        if not isinstance(row["continuation"], str) or not row["continuation"]:
            raise StreamlineError(f"{where}: continuation must be a non-empty string")
        gold = _gold(row, len(options), where)
        cont = row["continuation"]
        return Item(index, list(options), [d + cont] * len(options), [max(len(cont), 1)] * len(options), gold, line,
                    {"context_options": options, "continuation": cont, "gold": gold})
    # last_word
    if not isinstance(row["context"], str) or not isinstance(row["continuation"], str) or not row["continuation"]:
        raise StreamlineError(f"{where}: context must be a string and continuation a non-empty string")
    return Item(index, [row["context"]], [d + row["continuation"]], [max(len(row["continuation"]), 1)], 0, line,
                {"context": row["context"], "continuation": row["continuation"]})


def load_jsonl_task(path: str | os.PathLike, spec: TaskSpec | None = None) -> Task:
    """Load a JSON-lines task file.  Without ``spec`` the kind is detected from the first row and no delimiter is used."""
    path = Path(path)
    if not path.is_file():
        raise StreamlineError(f"task file {str(path)!r} does not exist")
    rows = read_jsonl_rows(path, what="task file ")
    if not rows:
        raise StreamlineError(f"task file {path} has no items (it is empty); give a file with at least one JSON row")
    if spec is None:
        lineno, first = rows[0]
        try:
            kind = detect_kind(first)
        except StreamlineError as exc:
            raise StreamlineError(f"task file {path}, line {lineno}: {exc}") from None
        spec = TaskSpec(name=path.name.split(".")[0], kind=kind, delimiter="", path=str(path))
    items = [row_to_item(row, spec, i, f"task file {path}, line {lineno}", lineno) for i, (lineno, row) in enumerate(rows)]
    return Task(spec, items, str(path))


def load_hub_task(spec: TaskSpec) -> Task:
    """Load a registered task from its ``datasets`` id (needs network access or a local datasets cache)."""
    if spec.hub is None:
        raise StreamlineError(f"task {spec.name!r} has no local file and no Hub source; give its .jsonl file")
    src = spec.hub
    where = f"{src.dataset}" + (f":{src.config}" if src.config else "") + f":{src.split}"
    try:
        import datasets

        ds = datasets.load_dataset(src.dataset, src.config, split=src.split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds (offline, missing, ...); name the input
        raise StreamlineError(
            f"task {spec.name!r}: no local file, and loading {where} from the Hub failed ({type(exc).__name__}: {exc}). "
            f"Offline, put {spec.name}.jsonl in a folder and pass --task-dir (or set {EVAL_DIR_ENV}), or pass the file"
        ) from exc
    convert = HUB_CONVERTERS[src.convert] if src.convert else (lambda r: r)
    items = []
    for i, row in enumerate(ds):
        try:
            converted = convert(dict(row))
        except (KeyError, ValueError, IndexError) as exc:
            raise StreamlineError(f"task {spec.name!r} ({where}), row {i}: cannot convert ({type(exc).__name__}: {exc})") from exc
        items.append(row_to_item(converted, spec, i, f"task {spec.name!r} ({where}), row {i}"))
    if not items:
        raise StreamlineError(f"task {spec.name!r} ({where}) has no items")
    return Task(spec, items, where)


def load_task_config(path: str | os.PathLike) -> TaskSpec:
    """A task spec from a YAML or JSON file: ``name, kind, delimiter, path`` (path relative to the config file)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise StreamlineError(f"task config {path}: expected a mapping with name, kind, delimiter, path")
    unknown = set(data) - {"name", "kind", "delimiter", "path", "description", "hub"}
    if unknown:
        raise StreamlineError(f"task config {path}: unknown keys {sorted(unknown)}")
    if "path" not in data and "hub" not in data:
        raise StreamlineError(f"task config {path}: give 'path' (a .jsonl file) or 'hub'")
    if data.get("path") and not os.path.isabs(data["path"]):
        data["path"] = str(path.parent / data["path"])
    hub = HubSource(**data.pop("hub")) if data.get("hub") else None
    data.setdefault("name", path.stem)
    return TaskSpec(hub=hub, **data)


def resolve_task(spec_or_name: str | os.PathLike | TaskSpec | Task, task_dir: str | os.PathLike | None = None) -> Task:
    """Turn ``NAME``, ``FILE``, ``NAME=FILE``, a YAML/JSON task config, a TaskSpec or a Task into a loaded Task.

    - ``NAME`` (registered): ``<task_dir>/<NAME>.jsonl`` (``task_dir`` or ``$HF_STREAMLINE_EVAL_DIR``) when it exists,
      else the task's ``datasets`` id.
    - ``FILE.jsonl``: a registered spec when the file's stem is a registered name (e.g. ``.../copa.jsonl`` keeps the
      ``copa`` delimiter), else a plain task with the kind detected and no delimiter.
    - ``NAME=FILE``: the registered spec ``NAME`` with the rows of ``FILE``.
    """
    from ..data import resolve_data_spec

    if isinstance(spec_or_name, Task):
        return spec_or_name
    task_dir = resolve_data_spec(task_dir)
    if isinstance(spec_or_name, TaskSpec):
        spec = spec_or_name
        if spec.path:
            return load_jsonl_task(spec.path, spec)
        local = _local_file(spec.name, task_dir)
        return load_jsonl_task(local, replace(spec, path=str(local))) if local else load_hub_task(spec)
    s = resolve_data_spec(str(spec_or_name))
    if "=" in s and not os.path.exists(s):
        name, file = s.split("=", 1)
        file = resolve_data_spec(file)
        return load_jsonl_task(file, replace(get_task_spec(name), path=file))
    if s.endswith((".yaml", ".yml", ".json")) and os.path.isfile(s):
        return resolve_task(load_task_config(s), task_dir)
    if os.path.isfile(s) or s.endswith(".jsonl"):
        stem = Path(s).name.split(".")[0]
        spec = replace(TASKS[stem], path=s) if stem in TASKS else None
        return load_jsonl_task(s, spec)
    return resolve_task(get_task_spec(s), task_dir)


def _local_file(name: str, task_dir: str | os.PathLike | None) -> Path | None:
    folder = task_dir or os.environ.get(EVAL_DIR_ENV)
    if not folder:
        return None
    if not os.path.isdir(folder):
        raise StreamlineError(f"--task-dir {str(folder)!r}: no such folder (give a folder of <task>.jsonl files, e.g. "
                              "bundled:eval, or leave it out to load the tasks from the Hub)")
    p = Path(folder) / f"{name}.jsonl"
    return p if p.is_file() else None


def subsample_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """Indices of a seeded random sample of ``limit`` of ``n`` items, sorted; all of them when ``limit`` is None or >= n.

    The same ``(n, limit, seed)`` always gives the same items, so a dense and a pruned model see the same questions.
    """
    if n <= 0:
        raise StreamlineError("the task has no items; an empty task cannot be evaluated")
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise StreamlineError(f"--limit {limit}: must be at least 1")
    return sorted(random.Random(seed).sample(range(n), limit))
