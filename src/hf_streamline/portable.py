"""Portable names: what a plan, a recipe or a model card records instead of a path of the machine that made it.

Everything hf-streamline writes into an output folder may be pushed to the Hub, so an absolute path (``/home/me/...``,
which says who and where) never lands there.  Each input is recorded as

- a Hub id or a ``dataset:`` spec, unchanged;
- ``bundled:NAME`` for the data that ships with the package (``hf_streamline/data``), which resolves anywhere;
- the file or folder *name* for any other local path (``/home/me/corpus/train.txt`` -> ``train.txt``).

The scrub happens when a file is written (``StreamlinePlan.save``, the saved recipe, the model card), so nothing local
is ever on disk in an output folder.  A plan still applies anywhere: ``hf-streamline apply PLAN --model BASE`` takes
the base model from ``--model``; the layer indices are what the plan carries.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

BUNDLED_PREFIX = "bundled:"
DATASET_PREFIX = "dataset:"
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# an absolute POSIX path (two components at least) or a home-relative one, inside a longer string: after the start,
# a space, a quote, a backtick, "=", "(" or ","
_EMBEDDED_ABS = re.compile(r"""(?:^|(?<=[\s'"`=(,\[]))(~?/(?:[^\s'"`,;()\[\]{}<>|]+/)+[^\s'"`,;()\[\]{}<>|]*)""")


def _bundled_root() -> Path | None:
    try:
        from .data import ROOT
    except ImportError:  # pragma: no cover - the data package ships with hf_streamline
        return None
    return Path(ROOT).resolve()


def is_hub_id(spec: str) -> bool:
    """``ORG/NAME`` that is not also a local path."""
    return bool(HUB_ID_RE.match(spec)) and not os.path.exists(spec)


def _is_absolute(s: str) -> bool:
    return s.startswith(("/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", s)) or s.startswith("\\\\")


def _local_name(path: str) -> str:
    """``bundled:REL`` for a path inside the package data, else the last component of the path."""
    root = _bundled_root()
    p = Path(os.path.expanduser(path))
    if root is not None:
        try:
            rel = p.resolve().relative_to(root)
            return BUNDLED_PREFIX + rel.as_posix() if rel.parts else BUNDLED_PREFIX
        except (ValueError, OSError):
            pass
    name = re.split(r"[\\/]", str(path).rstrip("/\\"))[-1]
    return name or str(path)


def portable_spec(spec: Any) -> Any:
    """One input spec (a file, a folder, ``NAME=PATH``, a Hub id, ``dataset:``/``bundled:``) as a plan records it."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    s = os.fspath(spec)
    if not s or s.startswith((BUNDLED_PREFIX, DATASET_PREFIX)) or "://" in s:
        return s
    if "=" in s and not os.path.exists(s):  # evaluate's NAME=PATH
        label, _, rest = s.partition("=")
        if rest and "/" not in label and "\\" not in label:
            return f"{label}={portable_spec(rest)}"
    if _is_absolute(s) or os.path.exists(s):
        return _local_name(s)
    return s


def portable_model_name(spec: Any) -> str:
    """The base model as a plan and a card record it: a Hub id unchanged, a local folder or file by its name."""
    s = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec)
    if is_hub_id(s) or not (_is_absolute(s) or os.path.exists(s) or s.startswith(".")):
        return s
    return _local_name(s)


def portable_text(text: str) -> str:
    """``text`` with every absolute path inside it replaced by its portable name."""
    def one_path(s: str) -> bool:  # the whole string is one path (spaces allowed where it exists)
        return _is_absolute(s) and (not any(c.isspace() for c in s) or os.path.exists(os.path.expanduser(s)))

    stripped = text.strip()
    if one_path(stripped):
        return portable_spec(stripped)
    label, eq, rest = stripped.partition("=")
    if eq and label and not any(c.isspace() or c in "/\\" for c in label) and one_path(rest):
        return f"{label}={portable_spec(rest)}"
    return _EMBEDDED_ABS.sub(lambda m: _local_name(m.group(1)), text)


def portable_value(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, strings) with every absolute path replaced by its portable name."""
    if isinstance(value, dict):  # keys too: a record keyed by input (e.g. the windows of each --data source)
        return {portable_value(k): portable_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_value(v) for v in value]
    if isinstance(value, os.PathLike):
        return portable_spec(value)
    if isinstance(value, str) and ("/" in value or "\\" in value or value.startswith("~")):
        return portable_text(value)
    return value
