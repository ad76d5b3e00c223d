"""Small shared helpers: versions, dtype parsing, atomic output folders, peak memory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import StreamlineError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "auto": "auto"}


def parse_dtype(name: str | torch.dtype | None):
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise StreamlineError(f"--dtype {name!r} is not known; use one of {sorted(DTYPES)}") from None


def versions() -> dict[str, str]:
    import transformers

    from . import __version__

    out = {"hf_streamline": __version__, "transformers": transformers.__version__, "torch": torch.__version__,
           "python": sys.version.split()[0]}
    for mod in ("peft", "accelerate", "huggingface_hub"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages
            pass
    return out


def read_jsonl_rows(path: str | os.PathLike, what: str = "") -> list[tuple[int, Any]]:
    """``(line number, parsed row)`` for every non-blank line of a JSON-lines file; bad JSON names the file and line
    (``what`` prefixes the file name in that error, e.g. ``"task file "``)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise StreamlineError(f"{what}{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
    return rows


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process under ``accelerate launch`` / ``torchrun`` (``(0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return process_rank()[0] == 0


def wait_for_everyone() -> None:
    """Barrier across the processes of a distributed run; a no-op in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def check_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing output folder unless ``overwrite``; called *before* any long work starts."""
    out = Path(output)
    if out.exists() and not overwrite:
        raise StreamlineError(f"output folder {str(out)!r} already exists; choose another --output or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise StreamlineError(f"output {str(out)!r} exists and is not a folder")
    return out


@contextlib.contextmanager
def atomic_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; on success it is moved into place, on failure it is deleted.

    No half-written output folder is ever left at ``output``.
    """
    out = check_output_dir(output, overwrite).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "x")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def param_names_of(model: torch.nn.Module, modules: list[torch.nn.Module]) -> list[str]:
    """Names (as ``model.named_parameters()`` reports them) of the parameters of ``modules``; shared parameters are
    found by identity, so a tied ``lm_head`` maps to the input embedding's name."""
    ids = {id(p) for m in modules for p in m.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def human_count(n: Any, missing: str = "—") -> str:
    """1234567 -> '1.23M' (K, M, B); ``missing`` for None.  Parameter and token counts in cards and tables."""
    if n is None:
        return missing
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the input embedding (where inputs must go), also for models placed with device_map."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        return emb.weight.device
    return next(model.parameters()).device
