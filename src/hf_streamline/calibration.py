"""Calibration data: token batches of ``n_samples x seq_len`` from files, ``datasets`` datasets or strings.

Samplers
- ``contiguous``: the documents are joined (separated by the EOS token) and cut into non-overlapping windows;
  ``n_samples`` of them are drawn with the seed (kept in text order).
- ``random``: the sampler of the pruning papers (SparseGPT, ShortGPT, ...): pick a random document at least
  ``seq_len`` tokens long and a random window inside it, ``n_samples`` times.
- ``padded``: each document is one sample, truncated to ``seq_len`` and right-padded; the attention mask marks the
  padding (for short texts such as instructions or questions).
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .errors import StreamlineError, naming
from .utils import read_jsonl_rows

if TYPE_CHECKING:
    import torch

SAMPLERS = ("contiguous", "random", "padded")
DOC_SEPARATOR = "<|endoftext|>"
DATASET_PREFIX = "dataset:"


@dataclass
class CalibrationConfig:
    """How to build calibration batches; stored in every plan so a run can be reproduced."""

    source: str | None = field(default=None, metadata={"help": "Text file, .jsonl file, or dataset:NAME[:CONFIG]:SPLIT[:COLUMN]."})
    n_samples: int = field(default=32, metadata={"help": "Number of sequences."})
    seq_len: int = field(default=256, metadata={"help": "Tokens per sequence."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampler."})
    sampler: str = field(default="contiguous", metadata={"help": "contiguous | random | padded."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text in datasets / JSON lines."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CalibrationData:
    input_ids: torch.Tensor  # (N, T) long
    attention_mask: torch.Tensor  # (N, T) long, 1 = real token
    config: CalibrationConfig

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int = 8) -> Iterator[dict[str, torch.Tensor]]:
        if batch_size < 1:
            raise StreamlineError("give at least 1", argument="batch_size", value=batch_size)
        for i in range(0, len(self), batch_size):
            yield {"input_ids": self.input_ids[i:i + batch_size], "attention_mask": self.attention_mask[i:i + batch_size]}

    def recipe(self) -> dict[str, Any]:
        d = self.config.to_dict()
        d["num_tokens"] = self.num_tokens
        return d


def parse_dataset_spec(spec: str, *, argument: str = "spec") -> dict[str, Any]:
    """``dataset:NAME:SPLIT``, ``dataset:NAME:CONFIG:SPLIT`` or ``dataset:NAME:CONFIG:SPLIT:COLUMN``.

    Use an empty CONFIG (``dataset:NAME::SPLIT:COLUMN``) to give a column without a config.  ``argument`` names the
    argument ``spec`` was given as in errors.
    """
    parts = spec[len(DATASET_PREFIX):].split(":")
    if 2 <= len(parts) <= 4 and (not parts[0] or not parts[-1 if len(parts) < 4 else 2]):
        raise StreamlineError("the dataset NAME and SPLIT must not be empty; e.g. "
                              "dataset:wikitext:wikitext-2-raw-v1:test", argument=argument, value=spec)
    if len(parts) == 2:
        return {"name": parts[0], "config": None, "split": parts[1], "column": None}
    if len(parts) == 3:
        return {"name": parts[0], "config": parts[1] or None, "split": parts[2], "column": None}
    if len(parts) == 4:
        return {"name": parts[0], "config": parts[1] or None, "split": parts[2], "column": parts[3] or None}
    raise StreamlineError(
        "expected dataset:NAME:SPLIT, dataset:NAME:CONFIG:SPLIT or dataset:NAME:CONFIG:SPLIT:COLUMN", argument=argument,
        value=spec)


_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def load_documents(source: str | Sequence[str], text_column: str = "text", what: str = "source") -> list[str]:
    """Documents (strings) from a list of strings, a text file, a JSON-lines file, or a ``dataset:`` spec.

    ``what`` names the argument ``source`` was given as in error messages (``source``, ``train_data`` ...)."""
    if source is None:
        raise StreamlineError("no calibration data given: pass a text file, a .jsonl file or "
                              "dataset:NAME[:CONFIG]:SPLIT[:COLUMN]", argument=what)
    if not isinstance(source, str):
        docs = [str(s) for s in source]
        if not docs:
            raise StreamlineError("calibration: the list of strings is empty")
        return docs
    from .data import resolve_data_spec

    source = resolve_data_spec(source)
    if source.startswith(DATASET_PREFIX):
        spec = parse_dataset_spec(source, argument=what)
        column = spec["column"] or text_column
        import datasets

        name = resolve_data_spec(spec["name"])
        ext = os.path.splitext(name)[1].lower()
        try:
            if os.path.isfile(name) and ext in _BUILDERS:
                ds = datasets.load_dataset(_BUILDERS[ext], data_files={spec["split"]: name}, split=spec["split"])
            else:
                ds = datasets.load_dataset(name, spec["config"], split=spec["split"])
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; name the input
            raise StreamlineError(f"could not load the dataset ({type(exc).__name__}: {exc})", argument=what,
                                  value=source) from exc
        if column not in ds.column_names:
            raise StreamlineError(f"no column {column!r}; columns are {ds.column_names} (add :COLUMN to the spec)",
                                  argument=what, value=source)
        return [t for t in ds[column] if isinstance(t, str) and t.strip()]
    if not os.path.isfile(source):
        raise StreamlineError("no such file (give a text file, a .jsonl file or dataset:...)", argument=what,
                              value=source)
    if source.endswith((".jsonl", ".json")):
        docs = []
        with naming(what):
            rows = read_jsonl_rows(source)
        for lineno, row in rows:
            if not isinstance(row, dict) or not isinstance(row.get(text_column), str):
                raise StreamlineError(f"{source}:{lineno}: expected an object with a string field {text_column!r}")
            docs.append(row[text_column])
        return docs
    from .validation import read_text_file

    with naming(what):
        raw = read_text_file(source, "text file")
    docs = [d.strip() for d in raw.split(DOC_SEPARATOR)] if DOC_SEPARATOR in raw else [raw]
    return [d for d in docs if d]


def build_calibration(tokenizer: Any, source: str | Sequence[str] | None = None,
                      config: CalibrationConfig | None = None, **overrides: Any) -> CalibrationData:
    """Tokenize ``source`` and sample ``n_samples x seq_len`` tokens as described by ``config``."""
    import torch

    config = config or CalibrationConfig()
    if source is not None:
        config.source = source if isinstance(source, str) else f"<{len(source)} strings>"
    for k, v in overrides.items():
        setattr(config, k, v)
    if config.sampler not in SAMPLERS:
        raise StreamlineError(f"calibration sampler {config.sampler!r} is unknown; use one of {list(SAMPLERS)}")
    if config.n_samples < 1 or config.seq_len < 2:
        raise StreamlineError(f"calibration needs n_samples >= 1 and seq_len >= 2 (got {config.n_samples}, {config.seq_len})")
    what = "source" if source is not None else "config.source"
    docs = load_documents(source if source is not None else config.source, config.text_column, what)
    rng = random.Random(config.seed)
    n, T = config.n_samples, config.seq_len
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = [tokenizer(d, add_special_tokens=False).input_ids for d in docs]
    if config.sampler == "padded":
        if len(encoded) < n:
            raise StreamlineError(
                f"calibration text too short: the padded sampler needs {n} documents, found {len(encoded)}"
            )
        picks = sorted(rng.sample(range(len(encoded)), n))
        ids = torch.full((n, T), pad_id, dtype=torch.long)
        mask = torch.zeros((n, T), dtype=torch.long)
        for row, j in enumerate(picks):
            toks = encoded[j][:T]
            ids[row, :len(toks)] = torch.tensor(toks, dtype=torch.long)
            mask[row, :len(toks)] = 1
        if int(mask.sum(1).min()) < 1:
            raise StreamlineError("calibration: a sampled document is empty after tokenization")
        return CalibrationData(ids, mask, config)
    if config.sampler == "random":
        long_docs = [e for e in encoded if len(e) >= T]
        if not long_docs:
            longest = max((len(e) for e in encoded), default=0)
            raise StreamlineError(
                f"calibration text too short: the random sampler needs documents of at least seq_len={T} tokens; "
                f"the longest of {len(encoded)} has {longest} tokens (use config.sampler 'contiguous' or a smaller "
                "config.seq_len)", argument=what
            )
        rows = []
        for _ in range(n):
            doc = long_docs[rng.randrange(len(long_docs))]
            start = rng.randrange(len(doc) - T + 1)
            rows.append(doc[start:start + T])
        ids = torch.tensor(rows, dtype=torch.long)
        return CalibrationData(ids, torch.ones_like(ids), config)
    # contiguous
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for i, e in enumerate(encoded):
        if i:
            stream.extend(sep)
        stream.extend(e)
    available = len(stream) // T
    if available < n:
        raise StreamlineError(
            f"calibration text too short: {n} samples x {T} tokens need {n * T} tokens, found {len(stream)} "
            f"(enough for {available} samples); give more text, or fewer config.n_samples / a smaller config.seq_len",
            argument=what
        )
    picks = sorted(rng.sample(range(available), n))
    ids = torch.tensor([stream[p * T:(p + 1) * T] for p in picks], dtype=torch.long)
    return CalibrationData(ids, torch.ones_like(ids), config)
