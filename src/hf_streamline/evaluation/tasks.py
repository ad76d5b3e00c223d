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

Registered tasks (ARC, BoolQ, PIQA, OpenBookQA, COPA, WinoGrande, LAMBADA) read rows with the Hub data set's own
fields (the rows lm-eval reads; the bundled files and ``datasets`` rows) and turn them into requests with lm-eval's
stock templates, character for character (``tests/test_lm_eval_prompts.py`` checks them against lm-eval's own
requests); rows in the prompt-baked formats of earlier versions are recovered to the Hub fields first.  Any other
lm-eval task, group or tag name resolves through lm-eval's ``TaskManager`` when lm-eval is installed
(:func:`resolve_tasks`), scored on lm-eval's own requests.  A plain JSON-lines file whose name is not a registered
task is used as stored, with no delimiter; give one with a YAML/JSON task config.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import StreamlineError
from ..utils import read_jsonl_rows

KINDS = ("multiple_choice", "partial", "last_word", "generate_until")  # generate_until: lm-eval tasks only
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
    title: str = field(default="", metadata={"help": "the data set's usual name (model cards), e.g. ARC-Easy."})

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
    hub: dict[str, Any] | None = field(default=None, repr=False)  # a registered task's Hub-schema row (lm-eval's input)

    @property
    def num_requests(self) -> int:
        return len(self.contexts)


@dataclass
class Task:
    spec: TaskSpec
    items: list[Item]
    source: str  # file path or datasets id, for reports
    lm_task: Any = field(default=None, repr=False)  # the lm-eval task object (generate_until tasks run in lm-eval)

    @property
    def generative(self) -> bool:
        return self.spec.kind == "generate_until"

    @property
    def prompts(self) -> str:
        """``lm-eval`` when the requests are lm-eval's own (a registered task's stock template, or an lm-eval task),
        ``as stored`` for a file's own prompts."""
        registered = self.spec.hub is not None and self.spec.hub.convert in HUB_CONVERTERS
        return "lm-eval" if registered or self.source.startswith("lm-eval:") else "as stored"

    @property
    def name(self) -> str:
        return self.spec.name

    def __len__(self) -> int:
        return len(self.items)

    def select(self, limit: int | float | None = None, seed: int | None = None) -> "Task":
        """The items ``limit`` selects (see :func:`subsample_indices`), kept in source order."""
        idx = subsample_indices(len(self.items), limit, seed)
        return Task(self.spec, [self.items[i] for i in idx], self.source, self.lm_task)


# ---------------------------------------------------------------------------------------------------------------------
# registry

TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add (or replace) a task in the registry; returns it so modules can register at import time."""
    TASKS[spec.name] = spec
    return spec


def get_task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[TASK_ALIASES.get(name, name)]
    except KeyError:
        raise StreamlineError(f"unknown task {name!r}; registered tasks are {sorted(TASKS)}, or give a .jsonl file") from None


def is_registered(name: str) -> bool:
    return TASK_ALIASES.get(name, name) in TASKS


# row converters: Hub-schema rows (the fields of the datasets lm-eval reads) -> our request formats, with lm-eval's
# stock templates character for character (lm_eval/tasks/<task>/*.yaml and their utils.py; checked against lm-eval's
# own requests in tests/test_lm_eval_prompts.py)
HUB_CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
# the Hub fields each converter reads: a row with them is a Hub-schema row
HUB_FIELDS: dict[str, tuple[str, ...]] = {}
# legacy rows (the prompt-baked formats of hf-streamline <= 0.1) -> Hub-schema rows
LEGACY_RECOVER: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def register_converter(name: str, fields: tuple[str, ...] = ()):
    def deco(fn):
        HUB_CONVERTERS[name] = fn
        HUB_FIELDS[name] = tuple(fields)
        return fn

    return deco


def register_recovery(name: str):
    def deco(fn):
        LEGACY_RECOVER[name] = fn
        return fn

    return deco


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"{what} does not start with {prefix!r}")
    return text[len(prefix):]


@register_converter("arc", ("question", "choices", "answerKey"))
def _arc(row: dict[str, Any]) -> dict[str, Any]:
    # arc_easy.yaml: doc_to_text "Question: {{question}}\nAnswer:", choices {{choices.text}}
    labels = list(row["choices"]["label"])
    return {"query": f"Question: {row['question']}\nAnswer:", "choices": list(row["choices"]["text"]),
            "gold": labels.index(row["answerKey"])}


@register_recovery("arc")
def _arc_back(row: dict[str, Any]) -> dict[str, Any]:
    question = _strip_prefix(row["query"], "Question: ", "an ARC query")
    question = question[:-len("\nAnswer:")] if question.endswith("\nAnswer:") else question
    labels = _letters(len(row["choices"]))
    return {"question": question, "choices": {"text": list(row["choices"]), "label": labels},
            "answerKey": labels[int(row["gold"])]}


@register_converter("boolq", ("passage", "question"))
def _boolq(row: dict[str, Any]) -> dict[str, Any]:
    # super_glue/boolq/default.yaml: "{{passage}}\nQuestion: {{question}}?\nAnswer:", choices no / yes
    answer = row["label"] if "label" in row else row["answer"]  # aps/super_glue: label 0/1; google/boolq: answer bool
    return {"query": f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", "choices": ["no", "yes"],
            "gold": int(bool(answer))}


@register_recovery("boolq")
def _boolq_back(row: dict[str, Any]) -> dict[str, Any]:
    body = row["query"]  # 0.1's "Passage: {p}\nQuestion: {q}?", or already lm-eval's "{p}\nQuestion: {q}?\nAnswer:"
    body = body[len("Passage: "):] if body.startswith("Passage: ") else body
    body = body[:-len("\nAnswer:")] if body.endswith("\nAnswer:") else body
    if "\nQuestion: " not in body:
        raise ValueError("a BoolQ query has a passage, then '\\nQuestion: ' and the question")
    passage, question = body.rsplit("\nQuestion: ", 1)
    return {"passage": passage, "question": question[:-1] if question.endswith("?") else question,
            "label": int(row["gold"])}


@register_converter("piqa", ("goal", "sol1", "sol2"))
def _piqa(row: dict[str, Any]) -> dict[str, Any]:
    # piqa.yaml: "Question: {{goal}}\nAnswer:", choices [sol1, sol2]
    return {"query": f"Question: {row['goal']}\nAnswer:", "choices": [row["sol1"], row["sol2"]],
            "gold": int(row["label"])}


@register_recovery("piqa")
def _piqa_back(row: dict[str, Any]) -> dict[str, Any]:
    goal = _strip_prefix(row["query"], "Question: ", "a PIQA query")
    goal = goal[:-len("\nAnswer:")] if goal.endswith("\nAnswer:") else goal.rstrip("\n")
    return {"goal": goal, "sol1": row["choices"][0], "sol2": row["choices"][1], "label": int(row["gold"])}


@register_converter("openbookqa", ("question_stem", "choices", "answerKey"))
def _openbookqa(row: dict[str, Any]) -> dict[str, Any]:
    # openbookqa.yaml: doc_to_text question_stem, choices {{choices.text}}, answerKey.lstrip()
    labels = list(row["choices"]["label"])
    return {"query": row["question_stem"], "choices": list(row["choices"]["text"]),
            "gold": labels.index(row["answerKey"].lstrip())}


@register_recovery("openbookqa")
def _openbookqa_back(row: dict[str, Any]) -> dict[str, Any]:
    labels = _letters(len(row["choices"]))
    return {"question_stem": row["query"], "choices": {"text": list(row["choices"]), "label": labels},
            "answerKey": labels[int(row["gold"])]}


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


@register_converter("copa", ("premise", "question", "choice1", "choice2"))
def _copa(row: dict[str, Any]) -> dict[str, Any]:
    # super_glue/copa/utils.py: premise without its last character + " because"/" therefore"; each choice
    # " " + first letter lowered (so with the default target delimiter the continuation starts with two spaces)
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    return {"query": row["premise"].strip()[:-1] + f" {connector}",
            "choices": [" " + _lower_first(row["choice1"]), " " + _lower_first(row["choice2"])],
            "gold": int(row["label"])}


@register_recovery("copa")
def _copa_back(row: dict[str, Any]) -> dict[str, Any]:
    query = row["query"]
    for connector, question in ((", therefore", "effect"), (", because", "cause"), (" therefore", "effect"),
                                (" because", "cause")):
        if query.endswith(connector):
            premise = query[:-len(connector)] + "."
            break
    else:
        raise ValueError("a COPA query ends with 'because' or 'therefore'")
    upper = lambda s: s.strip()[:1].upper() + s.strip()[1:]  # noqa: E731 - the Hub rows start with a capital
    return {"premise": premise, "question": question, "choice1": upper(row["choices"][0]),
            "choice2": upper(row["choices"][1]), "label": int(row["gold"])}


@register_converter("winogrande", ("sentence", "option1", "option2", "answer"))
def _winogrande(row: dict[str, Any]) -> dict[str, Any]:
    # winogrande/preprocess_winogrande.py: contexts = sentence up to "_" + each option; target = the rest, stripped
    sentence = row["sentence"]
    cut = sentence.index("_")
    return {"context_options": [sentence[:cut] + row["option1"], sentence[:cut] + row["option2"]],
            "continuation": sentence[cut + 1:].strip(), "gold": int(row["answer"]) - 1}


@register_recovery("winogrande")
def _winogrande_back(row: dict[str, Any]) -> dict[str, Any]:
    a, b = row["context_options"][:2]
    cut = 0
    while cut < min(len(a), len(b)) and a[cut] == b[cut]:
        cut += 1
    while cut > 0 and a[cut - 1].isalnum():  # the blank starts at a word boundary
        cut -= 1
    if "_" in a[:cut]:
        raise ValueError("the shared start of the two contexts holds '_', which would be taken for the blank")
    return {"sentence": a[:cut] + "_ " + row["continuation"], "option1": a[cut:], "option2": b[cut:],
            "answer": str(int(row["gold"]) + 1)}


@register_converter("lambada", ("text",))
def _lambada(row: dict[str, Any]) -> dict[str, Any]:
    # lambada_openai.yaml: context "{{text.split(' ')[:-1]|join(' ')}}", target "{{' '+text.split(' ')[-1]}}"
    words = row["text"].split(" ")
    return {"context": " ".join(words[:-1]), "continuation": words[-1]}


@register_recovery("lambada")
def _lambada_back(row: dict[str, Any]) -> dict[str, Any]:
    if " " in row["continuation"].strip():
        raise ValueError("a LAMBADA continuation is one word (lm-eval splits the text at its last space)")
    return {"text": f"{row['context']} {row['continuation'].strip()}"}


def hub_row(spec: "TaskSpec", row: dict[str, Any]) -> dict[str, Any]:
    """The Hub-schema row of a registered task's row: unchanged when it has the Hub fields, else recovered from the
    legacy prompt-baked format of hf-streamline <= 0.1."""
    name = spec.hub.convert if spec.hub else ""
    if name not in HUB_CONVERTERS:
        raise StreamlineError(f"task {spec.name!r} has no Hub-schema converter")
    if all(k in row for k in HUB_FIELDS[name]):
        return dict(row)
    return LEGACY_RECOVER[name](row)


for _spec in (
    TaskSpec("arc_easy", "multiple_choice", " ", hub=HubSource("allenai/ai2_arc", "ARC-Easy", "test", "arc"),
             description="ARC-Easy grade-school science questions, 4 choices", title="ARC-Easy"),
    TaskSpec("arc_challenge", "multiple_choice", " ", hub=HubSource("allenai/ai2_arc", "ARC-Challenge", "test", "arc"),
             description="ARC-Challenge, the harder ARC questions, 4 choices", title="ARC-Challenge"),
    TaskSpec("boolq", "multiple_choice", " ", hub=HubSource("aps/super_glue", "boolq", "validation", "boolq"),
             description="BoolQ yes/no questions about a passage", title="BoolQ"),
    TaskSpec("piqa", "multiple_choice", " ", hub=HubSource("baber/piqa", None, "validation", "piqa"),
             description="PIQA physical commonsense, 2 solutions", title="PIQA"),
    TaskSpec("openbookqa", "multiple_choice", " ", hub=HubSource("allenai/openbookqa", "main", "test", "openbookqa"),
             description="OpenBookQA elementary science, 4 choices", title="OpenBookQA"),
    TaskSpec("copa", "multiple_choice", " ", hub=HubSource("aps/super_glue", "copa", "validation", "copa"),
             description="COPA cause/effect, 2 choices", title="COPA"),
    TaskSpec("winogrande", "partial", " ", hub=HubSource("allenai/winogrande", "winogrande_xl", "validation", "winogrande"),
             description="WinoGrande pronoun resolution, partial scoring", title="WinoGrande"),
    TaskSpec("lambada_openai", "last_word", " ", hub=HubSource("EleutherAI/lambada_openai", "default", "test", "lambada"),
             description="LAMBADA (OpenAI version), last-word accuracy", title="LAMBADA (OpenAI)"),
):
    register_task(_spec)

# names of earlier versions -> lm-eval's names
TASK_ALIASES: dict[str, str] = {"openbook_qa": "openbookqa"}


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
    convert = spec.hub.convert if spec.hub is not None and spec.hub.convert in HUB_CONVERTERS else None
    hub = None
    if convert is not None:  # a registered task: lm-eval's stock template from the Hub fields
        try:
            hub = hub_row(spec, row)
            row = HUB_CONVERTERS[convert](hub)
        except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
            raise StreamlineError(
                f"{where}: not a {spec.name} row ({type(exc).__name__}: {exc}); give the Hub dataset's fields "
                f"({', '.join(HUB_FIELDS[convert])}) or the {spec.kind} fields ({', '.join(KIND_FIELDS[spec.kind])})"
            ) from None
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
                    gold, line, {"query": row["query"], "choices": choices, "gold": gold}, hub)
    if spec.kind == "partial":
        options = _strings(row["context_options"], "context_options", where, 2)
        if not isinstance(row["continuation"], str) or not row["continuation"]:
            raise StreamlineError(f"{where}: continuation must be a non-empty string")
        gold = _gold(row, len(options), where)
        cont = row["continuation"]
        return Item(index, list(options), [d + cont] * len(options), [max(len(cont), 1)] * len(options), gold, line,
                    {"context_options": options, "continuation": cont, "gold": gold}, hub)
    # last_word
    if not isinstance(row["context"], str) or not isinstance(row["continuation"], str) or not row["continuation"]:
        raise StreamlineError(f"{where}: context must be a string and continuation a non-empty string")
    return Item(index, [row["context"]], [d + row["continuation"]], [max(len(row["continuation"]), 1)], 0, line,
                {"context": row["context"], "continuation": row["continuation"]}, hub)


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
            f"Offline, put {spec.name}.jsonl in a folder and give that folder here (or set {EVAL_DIR_ENV}), or give "
            "the file", argument="task_dir"
        ) from exc
    items = [row_to_item(dict(row), spec, i, f"task {spec.name!r} ({where}), row {i}") for i, row in enumerate(ds)]
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
        spec = replace(get_task_spec(stem), path=s) if is_registered(stem) else None
        return load_jsonl_task(s, spec)
    return resolve_task(get_task_spec(s), task_dir)


def _is_lm_eval_yaml(path: str) -> bool:
    """An lm-eval task YAML (``task:`` / ``group:`` / ``include:``) rather than our task config (``name, kind, path``)."""
    if not path.endswith((".yaml", ".yml")) or not os.path.isfile(path):
        return False
    text = Path(path).read_text(encoding="utf-8")
    return any(line.split(":", 1)[0].strip() in ("task", "group", "include", "dataset_path")
               for line in text.splitlines() if ":" in line and not line.startswith((" ", "#", "-")))


def split_task_list(specs: Any) -> list[str]:
    """``"a,b c"`` / ``["a,b", "c"]`` -> ``["a", "b", "c"]`` (lm-eval's comma-separated lists; spaces also split)."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    out: list[Any] = []
    for s in specs:
        if isinstance(s, (Task, TaskSpec)):
            out.append(s)
            continue
        s = str(s)
        if os.path.exists(s):
            out.append(s)
            continue
        out.extend(p for part in s.split(",") for p in part.split() if p)
    return out


def resolve_tasks(specs: Any, task_dir: str | os.PathLike | None = None,
                  include_path: str | os.PathLike | None = None,
                  groups: dict[str, dict[str, Any]] | None = None) -> list[Task]:
    """Every task of ``specs``: comma-separated names, files, ``NAME=FILE``, task configs, and -- when lm-eval is
    installed -- any lm-eval task, group or tag name (or lm-eval task YAML), resolved by lm-eval's ``TaskManager``
    (``include_path``: more lm-eval YAMLs, e.g. with a local ``dataset_path``).  Registered tasks (also inside an
    lm-eval group) load from ``task_dir`` / the Hub with lm-eval's stock template; other lm-eval tasks are scored on
    lm-eval's own requests.  ``groups``, when given, receives every lm-eval group named that aggregates its members
    (``{group: {"tasks": [...], "weight_by_size": bool}}``, e.g. mmlu's size-weighted mean)."""
    from ..data import resolve_data_spec

    out: list[Task] = []
    for spec in split_task_list(specs):
        if isinstance(spec, (Task, TaskSpec)):
            out.append(resolve_task(spec, task_dir))
            continue
        s = resolve_data_spec(spec)
        if is_registered(s) or (os.path.exists(s) and not _is_lm_eval_yaml(s)) or s.endswith(".jsonl") \
                or ("=" in s and not os.path.exists(s)):
            out.append(resolve_task(s, task_dir))
            continue
        from .lm_eval_bridge import expand_lm_eval_name, lm_eval_available, load_lm_eval_tasks

        if not lm_eval_available():
            raise StreamlineError(f"unknown task {s!r}; registered tasks are {sorted(TASKS)} (install lm_eval for its "
                                  "task and group names), or give a .jsonl file")
        leaves = [s] if os.path.isfile(s) else expand_lm_eval_name(s, include_path)
        if leaves is None:
            raise StreamlineError(f"unknown task {s!r}: not a registered task ({', '.join(sorted(TASKS))}), not a file, "
                                  "and lm-eval knows no task, group or tag of that name")
        before = len(out)
        registered = [l for l in leaves if is_registered(l)]
        out.extend(resolve_task(l, task_dir) for l in registered)
        rest = [l for l in leaves if not is_registered(l)]
        for leaf in rest:
            out.extend(load_lm_eval_tasks(leaf, include_path))
        if groups is not None and not os.path.isfile(s):
            from .lm_eval_bridge import group_aggregation

            weight = group_aggregation(s, include_path)
            if weight is not None:
                groups[s] = {"tasks": [t.name for t in out[before:]], "weight_by_size": weight}
    seen: dict[str, str] = {}
    unique = []
    for t in out:  # a task named directly and again inside a group is scored once; two different ones are an error
        if t.name in seen:
            if seen[t.name] != t.source:
                raise StreamlineError(f"two tasks are named {t.name!r} ({seen[t.name]} and {t.source}); give one of "
                                      "them another name (NAME=FILE or a task config)")
            continue
        seen[t.name] = t.source
        unique.append(t)
    return unique


def _local_file(name: str, task_dir: str | os.PathLike | None) -> Path | None:
    folder = task_dir or os.environ.get(EVAL_DIR_ENV)
    if not folder:
        return None
    if not os.path.isdir(folder):
        why = "no such folder (give a folder of <task>.jsonl files, e.g. bundled:eval, or leave it out to load the " \
              "tasks from the Hub)"
        if task_dir:
            raise StreamlineError(why, argument="task_dir", value=str(folder))
        raise StreamlineError(f"{EVAL_DIR_ENV}={str(folder)!r}: {why}")
    for alias in (name, *[a for a, n in TASK_ALIASES.items() if n == name]):  # openbookqa, then openbook_qa
        p = Path(folder) / f"{alias}.jsonl"
        if p.is_file():
            return p
    return None


def check_limit(limit: Any) -> int | float:
    """A ``--limit`` as lm-eval takes it: a whole number of items (>= 1, returned as int) or a fraction in (0, 1)."""
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0:
        raise StreamlineError("give a whole number of items (>= 1) or a fraction between 0 and 1", argument="limit",
                              value=limit)
    if limit >= 1 and float(limit) != int(limit):
        raise StreamlineError("a limit of 1 or more is a number of items; give a whole number", argument="limit",
                              value=limit)
    return int(limit) if limit >= 1 else float(limit)


def item_count(n: int, limit: int | float | None) -> int:
    """How many of ``n`` items ``limit`` keeps, as lm-eval counts: all for None, ``ceil(n * limit)`` for a fraction
    below 1, else ``min(n, limit)``."""
    if limit is None:
        return n
    limit = check_limit(limit)
    return max(1, math.ceil(n * limit)) if limit < 1 else min(n, limit)


def subsample_indices(n: int, limit: int | float | None, seed: int | None = None) -> list[int]:
    """Indices of the items ``limit`` selects, sorted: the first ones (lm-eval's ``--limit``: a count, or a fraction
    below 1), or with ``seed`` a seeded random sample of that many (the same ``(n, limit, seed)`` always gives the
    same items, so a dense and a pruned model see the same questions)."""
    if n <= 0:
        raise StreamlineError("the task has no items; an empty task cannot be evaluated")
    k = item_count(n, limit)
    if k >= n:
        return list(range(n))
    if seed is None:
        return list(range(k))
    return sorted(random.Random(seed).sample(range(n), k))
