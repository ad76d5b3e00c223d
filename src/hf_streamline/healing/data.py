"""Healing data: plain text as LM windows, or Alpaca-format instructions with the loss on the response only.

Sources
- plain text: a text file (documents separated by ``<|endoftext|>``), a ``.jsonl`` file with a ``text`` field, or
  ``dataset:NAME[:CONFIG]:SPLIT[:COLUMN]`` (see :mod:`hf_streamline.calibration`); cut into windows of ``seq_len``
  tokens (every token is a target).
- instructions (Alpaca: ``instruction``, optional ``input``, ``output``): a ``.json`` list or ``.jsonl`` file, a
  ``dataset:NAME[:CONFIG]:SPLIT`` spec, or a bare ``datasets`` id such as ``yahma/alpaca-cleaned`` (train split).
  The prompt is the tokenizer's chat template where it has one (``template="auto"``, the default: an instruct model
  is healed in the format it answers in), else the Alpaca template; ``alpaca`` / ``chat`` force one.  Only the
  response tokens (and EOS) are targets; examples are cut at ``seq_len`` tokens (the paper's cutoff: 256).

The last ``eval_size`` windows / examples (a seeded choice for instructions) are the validation split used for
best-checkpoint selection.  Several sources of one kind (``--data A B``, :func:`load_pooled_healing_data`) are pooled: their windows /
examples shuffled together with ``seed`` before the split.  A token budget shorter than one epoch trains on a seeded
random subset of the training examples, each seen once (:meth:`HealingData.take`).
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from ..calibration import DATASET_PREFIX, parse_dataset_spec
from ..errors import StreamlineError, naming
from ..options import DATA_FORMATS as FORMATS, PROMPT_TEMPLATES as TEMPLATES
from ..utils import read_jsonl_rows

ALPACA_FIELDS = ("instruction", "output")

ALPACA_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. "
                          "Write a response that appropriately completes the request.\n\n"
                          "### Instruction:\n{instruction}\n\n### Response:\n")


@dataclass
class HealingDataConfig:
    """Where the healing text comes from and how it is cut (stored in the plan's healing record)."""

    source: str | list[str] | None = field(default=None, metadata={"help": "text file, .json/.jsonl file, dataset:NAME[:CONFIG]:SPLIT[:COLUMN], or a datasets id of Alpaca data (several: load_pooled_healing_data)."})
    format: str = field(default="auto", metadata={"help": "auto | text | alpaca (auto: Alpaca when the records have instruction/output fields)."})
    seq_len: int = field(default=256, metadata={"help": "tokens per window (text) / cutoff per example (instructions)."})
    template: str = field(default="auto", metadata={"help": "instruction prompt: auto (the tokenizer's chat template where it has one, else alpaca) | alpaca (the Stanford template) | chat (the tokenizer's chat template)."})
    text_column: str = field(default="text", metadata={"help": "column of the text in .jsonl files and datasets."})
    eval_size: int | None = field(default=None, metadata={"help": "windows / examples held out for validation (default: 5%, at most 64; 0 = none)."})
    max_examples: int | None = field(default=None, metadata={"help": "use at most this many windows / examples for training."})
    seed: int = field(default=0, metadata={"help": "seed of the validation split of instruction data."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InstructionExamples(Dataset):
    """Tokenized instruction examples: ``input_ids`` and ``labels`` (-100 on the prompt) of varying length."""

    def __init__(self, examples: list[dict[str, list[int]]], source: str = ""):
        self.examples = examples
        self.source = source

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ex = self.examples[i]
        ids = torch.tensor(ex["input_ids"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.tensor(ex["labels"], dtype=torch.long)}

    @property
    def mean_tokens(self) -> float:
        return sum(len(e["input_ids"]) for e in self.examples) / max(1, len(self.examples))


def pad_collator(pad_token_id: int):
    """Right-pad ``input_ids`` (pad id), ``attention_mask`` (0) and ``labels`` (-100) to the longest in the batch."""

    def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(int(it["input_ids"].shape[0]) for it in items)
        out = {"input_ids": torch.full((len(items), width), pad_token_id, dtype=torch.long),
               "attention_mask": torch.zeros((len(items), width), dtype=torch.long),
               "labels": torch.full((len(items), width), -100, dtype=torch.long)}
        for j, it in enumerate(items):
            n = int(it["input_ids"].shape[0])
            out["input_ids"][j, :n] = it["input_ids"]
            out["attention_mask"][j, :n] = it["attention_mask"]
            out["labels"][j, :n] = it["labels"]
        return out

    return collate


@dataclass
class HealingData:
    """Training and validation sets plus what they are (``describe()`` goes into the plan)."""

    train: Dataset
    eval: Dataset | None
    kind: str  # text | alpaca
    config: HealingDataConfig
    pad_token_id: int
    tokens_per_example: float
    info: dict[str, Any] = field(default_factory=dict)

    def collator(self):
        return pad_collator(self.pad_token_id)

    def take(self, n: int, seed: int = 0) -> "HealingData":
        """The same data with a seeded random ``n`` of its training examples (kept in their order), validation
        unchanged: what a token budget shorter than one epoch trains on, so that nothing is prepared (the teacher's
        cached logits, generated continuations) for examples training would never see."""
        from dataclasses import replace as _replace

        from ..replacement.activations import TokenWindows

        total = len(self.train)  # type: ignore[arg-type]
        if n >= total:
            return self
        train: Any
        if isinstance(self.train, TokenWindows):
            train = self.train.take(n, seed)
        else:
            keep = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[:n].sort().values
            if isinstance(self.train, InstructionExamples):
                train = InstructionExamples([self.train.examples[int(i)] for i in keep], self.train.source)
            else:
                from torch.utils.data import Subset

                train = Subset(self.train, keep.tolist())
        return _replace(self, train=train, info={**self.info, "budget_subset": {"examples": n, "of": total}})

    def describe(self) -> dict[str, Any]:
        return {"source": self.config.source, "format": self.kind, "seq_len": self.config.seq_len,
                "template": self.info.get("template", self.config.template) if self.kind == "alpaca" else None,
                "train_examples": len(self.train),
                "eval_examples": len(self.eval) if self.eval is not None else 0,
                "tokens_per_example": round(self.tokens_per_example, 1), **self.info}


# ---- reading ------------------------------------------------------------------------------------------------------

def _looks_like_hub_id(source: str) -> bool:
    return (not os.path.exists(source) and not source.startswith(DATASET_PREFIX) and source.count("/") == 1
            and not source.startswith((".", "/")) and not source.endswith((".txt", ".json", ".jsonl")))


def _read_records(source: str) -> list[Any] | None:
    """Records of a .json / .jsonl file, a ``dataset:`` spec or a datasets id; ``None`` for a plain text file."""
    from ..data import resolve_data_spec

    source = resolve_data_spec(source)
    if source.startswith(DATASET_PREFIX) or _looks_like_hub_id(source):
        import datasets

        spec = (parse_dataset_spec(source, argument="config.source") if source.startswith(DATASET_PREFIX)
                else {"name": source, "config": None, "split": "train", "column": None})
        name = spec["name"]
        ext = os.path.splitext(name)[1].lower()
        try:
            if os.path.isfile(name) and ext in (".json", ".jsonl"):
                ds = datasets.load_dataset("json", data_files={spec["split"]: name}, split=spec["split"])
            else:
                ds = datasets.load_dataset(name, spec["config"], split=spec["split"])
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; name the input
            raise StreamlineError(f"could not load the dataset ({type(exc).__name__}: {exc})", argument="config.source",
                                  value=source) from exc
        if spec.get("column"):
            col = spec["column"]
            if col not in ds.column_names:
                raise StreamlineError(f"no column {col!r}; columns are {ds.column_names}", argument="config.source",
                                      value=source)
            return [{"text": t} for t in ds[col]]
        return list(ds)
    if not os.path.isfile(source):
        raise StreamlineError("no such file (give a text file, a .json/.jsonl file, "
                              "dataset:NAME[:CONFIG]:SPLIT[:COLUMN] or a datasets id)", argument="config.source",
                              value=source)
    from ..validation import read_text_file

    if source.endswith(".jsonl"):
        with naming("config.source"):
            return [row for _, row in read_jsonl_rows(source)]
    if source.endswith(".json"):
        with naming("config.source"):
            text = read_text_file(source, "JSON file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StreamlineError(f"not valid JSON ({exc.msg} at line {exc.lineno})", argument="config.source",
                                  value=source) from exc
        if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise StreamlineError("expected a JSON list of records (or an object holding one)",
                                      argument="config.source", value=source)
            data = lists[0]
        if not isinstance(data, list):
            raise StreamlineError("expected a JSON list of records", argument="config.source", value=source)
        return data
    with naming("config.source"):  # a plain text file: binary or non-UTF-8 bytes fail here, naming the source
        read_text_file(source, "text file")
    return None


def detect_format(records: list[Any] | None, text_column: str = "text") -> str:
    if records is None:
        return "text"
    if not records:
        raise StreamlineError("the data holds no records", argument="config.source")
    first = records[0]
    if isinstance(first, dict) and all(f in first for f in ALPACA_FIELDS):
        return "alpaca"
    if isinstance(first, dict) and text_column in first:
        return "text"
    keys = sorted(first) if isinstance(first, dict) else type(first).__name__
    raise StreamlineError(
        f"cannot tell the format of the records (fields {keys}); instruction data needs the Alpaca fields "
        f"'instruction', 'input' (optional) and 'output'; text data needs a {text_column!r} field (or name the text "
        "field with config.text_column)", argument="config.source")


def validate_alpaca(records: list[Any], source: str) -> None:
    for i, row in enumerate(records):
        if not isinstance(row, dict):
            raise StreamlineError(f"record {i} is a {type(row).__name__}, not an object with the Alpaca fields "
                                  "instruction / input / output", argument="config.source", value=source)
        missing = [f for f in ALPACA_FIELDS if f not in row]
        if missing:
            raise StreamlineError(
                f"record {i} has no {' / '.join(repr(m) for m in missing)} field (fields: {sorted(row)}); Alpaca "
                "instruction data needs 'instruction', 'input' (optional) and 'output'", argument="config.source",
                value=source)
        for f in ("instruction", "input", "output"):
            v = row.get(f)
            if v is not None and not isinstance(v, str):
                raise StreamlineError(f"record {i}: field {f!r} must be a string, not {type(v).__name__}",
                                      argument="config.source", value=source)


def resolve_template(tokenizer: Any, template: str = "auto") -> str:
    """``auto`` -> ``chat`` where the tokenizer has a chat template, else ``alpaca``; other names unchanged."""
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    return template


def format_prompt(row: dict[str, Any], tokenizer: Any, template: str = "auto") -> str:
    template = resolve_template(tokenizer, template)
    instruction, extra = row["instruction"].strip(), (row.get("input") or "").strip()
    if template == "alpaca":
        return (ALPACA_PROMPT.format(instruction=instruction, input=extra) if extra
                else ALPACA_PROMPT_NO_INPUT.format(instruction=instruction))
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise StreamlineError("the tokenizer has no chat template; use 'alpaca' (or 'auto')",
                                  argument="config.template", value=template)
        content = instruction + (f"\n\n{extra}" if extra else "")
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    raise StreamlineError(f"unknown; use one of {list(TEMPLATES)}", argument="config.template", value=template)


def tokenize_instruction(row: dict[str, Any], tokenizer: Any, cutoff: int, template: str = "auto") -> dict[str, list[int]]:
    """``input_ids`` of prompt + response + EOS (cut at ``cutoff``); ``labels`` = -100 on the prompt tokens."""
    template = resolve_template(tokenizer, template)
    prompt = format_prompt(row, tokenizer, template)
    special = template != "chat"  # a chat template already holds the special tokens it wants
    prompt_ids = tokenizer(prompt, add_special_tokens=special).input_ids
    full = tokenizer(prompt + row["output"].strip(), add_special_tokens=special).input_ids
    if tokenizer.eos_token_id is not None:
        full = full + [tokenizer.eos_token_id]
    full = full[:cutoff]
    n_prompt = min(len(prompt_ids), len(full))
    return {"input_ids": full, "labels": [-100] * n_prompt + full[n_prompt:]}


def _default_eval_size(n: int) -> int:
    if n < 8:
        return 0
    return max(1, min(64, int(round(0.05 * n))))


def load_healing_data(tokenizer: Any, config: HealingDataConfig | None = None, source: Any = None,
                      **overrides: Any) -> HealingData:
    """Read, tokenize and split the healing data described by ``config`` (see the module docstring)."""
    from ..replacement.activations import token_windows

    config = config or HealingDataConfig()
    if source is not None:
        config.source = source
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise StreamlineError(f"load_healing_data: unknown option {k!r}")
        setattr(config, k, v)
    if config.source is None:
        raise StreamlineError("no healing data given: pass a file, dataset:NAME:SPLIT or a datasets id",
                              argument="config.source")
    if config.format not in FORMATS:
        raise StreamlineError(f"unknown; use one of {list(FORMATS)}", argument="config.format", value=config.format)
    if config.seq_len < 8:
        raise StreamlineError("too short for training (use >= 8)", argument="config.seq_len", value=config.seq_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    source = config.source
    records = None if not isinstance(source, str) else _read_records(source)
    kind = config.format
    if kind == "auto":
        kind = detect_format(records, config.text_column) if isinstance(source, str) else "text"
    if kind == "alpaca":
        if records is None:
            raise StreamlineError("a plain text file, but config.format 'alpaca' needs a .json / .jsonl file or a "
                                  "dataset with the fields instruction / input / output", argument="config.source",
                                  value=source)
        validate_alpaca(records, str(source))
        examples, dropped = [], 0
        for row in records:
            ex = tokenize_instruction(row, tokenizer, config.seq_len, config.template)
            if all(l == -100 for l in ex["labels"]):
                dropped += 1  # the prompt alone fills the cutoff: nothing to learn from
                continue
            examples.append(ex)
        if not examples:
            raise StreamlineError(f"every prompt of {source!r} is longer; raise it", argument="config.seq_len",
                                  value=config.seq_len)
        n_eval = _default_eval_size(len(examples)) if config.eval_size is None else int(config.eval_size)
        if n_eval >= len(examples):
            raise StreamlineError(f"leaves no training examples out of {len(examples)}", argument="config.eval_size",
                                  value=n_eval)
        order = list(range(len(examples)))
        random.Random(config.seed).shuffle(order)
        eval_idx = set(order[:n_eval])
        train_ex = [e for i, e in enumerate(examples) if i not in eval_idx]
        eval_ex = [e for i, e in enumerate(examples) if i in eval_idx]
        if config.max_examples is not None:
            train_ex = train_ex[:config.max_examples]
        train = InstructionExamples(train_ex, str(source))
        return HealingData(train, InstructionExamples(eval_ex, str(source)) if eval_ex else None, "alpaca", config, pad,
                           train.mean_tokens, {"template": resolve_template(tokenizer, config.template),
                                               "dropped_examples": dropped,
                                               "supervised_tokens": sum(sum(l != -100 for l in e["labels"]) for e in train_ex)})
    # plain text -> windows
    text_source: Any = source
    if records is not None:  # .jsonl / .json / dataset records with a text field
        bad = next((i for i, r in enumerate(records) if not isinstance(r, dict) or not isinstance(r.get(config.text_column), str)), None)
        if bad is not None:
            raise StreamlineError(f"record {bad} has no string field {config.text_column!r} (name the text field "
                                  "with config.text_column, or give Alpaca records with instruction/output)",
                                  argument="config.source", value=source)
        text_source = [r[config.text_column] for r in records if r[config.text_column].strip()]
    limit = None
    if config.max_examples is not None:
        limit = config.max_examples + (config.eval_size or 64)
    windows = token_windows(tokenizer, text_source, config.seq_len, max_windows=limit, text_column=config.text_column,
                            what="config.source")
    if len(windows) == 0:
        raise StreamlineError(f"gives no window of {config.seq_len} tokens; give more text or a smaller "
                              "config.seq_len", argument="config.source", value=source)
    train, held = _split_off_validation(windows, config)
    return HealingData(train, held, "text", config, pad, float(config.seq_len))


def _split_off_validation(pool: Any, config: HealingDataConfig) -> tuple[Any, Any]:
    """The last ``config.eval_size`` windows / examples of ``pool`` (default: 5%, at most 64) for validation, the
    first ``config.max_examples`` of the rest for training."""
    from ..replacement.activations import TokenWindows

    n_eval = _default_eval_size(len(pool)) if config.eval_size is None else int(config.eval_size)
    if n_eval >= len(pool):
        raise StreamlineError(f"leaves no training examples out of {len(pool)}", argument="config.eval_size",
                              value=n_eval)
    cap = config.max_examples
    if isinstance(pool, TokenWindows):
        train, held = pool.split(n_eval)
        if cap is not None and len(train) > cap:
            train = TokenWindows(train.input_ids[:cap], train.source)
        return train, held
    cut = len(pool) - n_eval
    return (InstructionExamples(pool.examples[:cut][:cap], pool.source),
            InstructionExamples(pool.examples[cut:], pool.source) if n_eval else None)


def load_pooled_healing_data(tokenizer: Any, config: HealingDataConfig, sources: Sequence[str]) -> HealingData:
    """Several sources of one kind (``--data A B``): each read as a whole with ``config``'s options, their windows /
    examples pooled and shuffled with ``config.seed`` (so the validation split and ``max_examples`` draw from every
    source), then split.  One source: :func:`load_healing_data`.  (``config.source`` as a list of strings stays what
    it is for :func:`load_healing_data`: the documents themselves.)"""
    from dataclasses import replace as _replace

    from ..replacement.activations import TokenWindows

    sources = [str(s) for s in sources]
    if not sources:
        raise StreamlineError("no healing data given: pass a file, dataset:NAME:SPLIT or a datasets id",
                              argument="sources")
    if len(sources) == 1:
        return load_healing_data(tokenizer, _replace(config, source=sources[0]))
    config = _replace(config, source=sources)
    parts = [load_healing_data(tokenizer, _replace(config, source=s, eval_size=0, max_examples=None))
             for s in sources]
    kinds = {p.kind for p in parts}
    if len(kinds) > 1:
        listed = ", ".join(f"{s} ({p.kind})" for s, p in zip(sources, parts))
        raise StreamlineError(f"mix plain text and Alpaca instructions ({listed}); give sources of one kind",
                              argument="sources")
    kind = parts[0].kind
    sizes = {s: len(p.train) for s, p in zip(sources, parts)}
    order = torch.randperm(sum(sizes.values()), generator=torch.Generator().manual_seed(int(config.seed)))
    name = " + ".join(sources)
    if kind == "text":
        pooled: Any = TokenWindows(torch.cat([p.train.input_ids for p in parts])[order], name)  # type: ignore[attr-defined]
    else:
        examples = [e for p in parts for e in p.train.examples]  # type: ignore[attr-defined]
        pooled = InstructionExamples([examples[int(i)] for i in order], name)
    train, held = _split_off_validation(pooled, config)
    info = {**parts[0].info, "sources": sizes}
    if kind == "alpaca":
        info["dropped_examples"] = sum(p.info.get("dropped_examples", 0) for p in parts)
        info["supervised_tokens"] = sum(sum(l != -100 for l in e["labels"]) for e in train.examples)
    tokens = float(config.seq_len) if kind == "text" else train.mean_tokens
    return HealingData(train, held, kind, config, parts[0].pad_token_id, tokens, info)


def steps_for_budget(budget_tokens: int, data: HealingData, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps that consume about ``budget_tokens`` tokens (at least one)."""
    if budget_tokens < 1:
        raise StreamlineError("must be >= 1", argument="budget_tokens", value=budget_tokens)
    from ..utils import process_rank

    per_step = batch_size * grad_accum * data.tokens_per_example * process_rank()[1]  # every process takes a batch
    return max(1, math.ceil(budget_tokens / per_step))
