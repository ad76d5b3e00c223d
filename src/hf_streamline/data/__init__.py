"""Data shipped with the package, so that ``pip install hf-streamline`` then ``hf-streamline demo`` works offline.

Every file is a small subset of a permissively licensed public source; ``LICENSES.md`` in this folder names the
source and licence of each.  Anywhere the library takes a text file, a JSON-lines file or a task folder, the spec
``bundled:RELATIVE/PATH`` (e.g. ``bundled:text/wikitext2_test.raw``, ``bundled:eval``) names one of these files, so
recipes, plans and model cards stay portable (no absolute path of the machine that made them).

| spec | what |
|---|---|
| ``bundled:text/wikitext2_test.raw`` | WikiText-2 raw, test split (perplexity) |
| ``bundled:text/stories260k_samples.txt`` | 8 stories sampled from the stories260K model (in-domain text for it) |
| ``bundled:train/wikipedia_30_articles.txt`` | 30 English Wikipedia articles (calibration), disjoint from WikiText-2 test |
| ``bundled:train/c4_300_docs.jsonl`` | 300 C4 web documents (healing / training text) |
| ``bundled:recipes/recommended_25.yaml`` | the recommended recipe (``hf-streamline run`` takes the spec) |
| ``bundled:eval`` | 300 items each (COPA: all 100) of ARC-Easy/Challenge, PIQA, OpenBookQA, BoolQ, WinoGrande, LAMBADA |
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StreamlineError

PREFIX = "bundled:"
ROOT = Path(__file__).resolve().parent


def bundled_path(name: str = "") -> Path:
    """The installed path of a bundled file or folder (``"text/wikitext2_test.raw"``, ``"eval"``, ``""`` = the root)."""
    rel = Path(name.strip("/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise StreamlineError(f"{PREFIX}{name}: name a file inside the bundled data, e.g. {PREFIX}text/wikitext2_test.raw")
    path = ROOT / rel
    if not path.exists():
        raise StreamlineError(f"{PREFIX}{name}: no such bundled file; available: {', '.join(available())}")
    return path


def available() -> list[str]:
    """Every bundled file, as the name ``bundled:`` takes."""
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if p.is_file() and p.suffix in (".raw", ".txt", ".jsonl", ".yaml"))


def resolve_data_spec(spec: str | os.PathLike | None) -> str | None:
    """``bundled:X`` -> the installed path of X; anything else unchanged (a path, a ``dataset:`` spec, ``None``)."""
    if spec is None:
        return None
    s = str(spec)
    if s.startswith(PREFIX):
        return str(bundled_path(s[len(PREFIX):]))
    return s
