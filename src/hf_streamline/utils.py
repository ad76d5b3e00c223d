"""Small shared helpers: versions, dtype parsing, atomic output folders, peak memory."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .errors import StreamlineError

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, not here: the command line reads this module before it knows whether the command
# needs torch at all (``--help``, ``run --validate-only``: see tests/test_cli_startup.py)

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16",
          "bf16": "bfloat16", "auto": "auto"}  # accepted name -> torch dtype attribute


def contiguous_runs(indices: Iterable[int]) -> list[list[int]]:
    """Runs of consecutive integers: ``[26, 12, 13, 14]`` -> ``[[12, 13, 14], [26]]`` (sorted, duplicates dropped)."""
    runs: list[list[int]] = []
    for i in sorted(set(int(x) for x in indices)):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


SECRET_FLAGS = ("--token",)


def without_secrets(argv: Iterable[str], *secrets: str | None) -> list[str]:
    """``argv`` without the secret flags and their values (``--token hf_...`` / ``--token=hf_...``, and any argument
    holding one of ``secrets`` -- the parsed values, which also catches argparse's abbreviations such as ``--tok``):
    what may be printed, logged or recorded; the commands read the token from HF_TOKEN or the stored login when it is
    left out."""
    values = [v for v in secrets if v]
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in SECRET_FLAGS:
            skip = True
            continue
        if a.startswith(tuple(f + "=" for f in SECRET_FLAGS)) or any(v in a for v in values):
            if out and out[-1].startswith("--") and any(a == v for v in values):
                out.pop()  # the abbreviated flag before the value
            continue
        out.append(a)
    return out


def dtype_name(name: str) -> str:
    """The torch dtype ``name`` stands for, as its attribute name (``"bf16"`` -> ``"bfloat16"``), or ``"auto"``;
    checked without importing torch (recipe validation)."""
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise StreamlineError(f"not known; use one of {sorted(DTYPES)}", argument="dtype", value=name) from None


def parse_dtype(name: str | torch.dtype | None):
    import torch

    if name is None or isinstance(name, torch.dtype):
        return name
    attr = dtype_name(name)
    return attr if attr == "auto" else getattr(torch, attr)


def versions() -> dict[str, str]:
    import torch
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
    from .validation import read_text_file

    rows = []
    for lineno, line in enumerate(read_text_file(path, what.strip() or "JSON-lines file").split("\n"), 1):
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


def is_distributed() -> bool:
    """Whether a process group is up (``accelerate launch`` / ``torchrun`` once accelerate or the Trainer set it up);
    never where torch was not even imported."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized()


def wait_for_everyone() -> None:
    """Barrier across the processes of a distributed run; a no-op in a single process."""
    if is_distributed():
        import torch

        torch.distributed.barrier()


def end_distributed(synchronize: bool = True) -> None:
    """Tear the process group down before the interpreter exits (a no-op without one). Without it gloo's worker threads
    die during finalisation and abort the process (``terminate called without an active exception``, SIGABRT) after the
    work has finished, which ``accelerate launch`` reports as a failed run.

    With ``synchronize`` (every rank finished its work) the ranks first meet at a barrier and then let go of the GIL for
    a moment: a gloo worker thread frees the tensors of the last collectives (the barrier keeps the ones before it
    alive) after the caller has returned, and that needs the GIL; if the main thread meanwhile frees the last
    reference to the group (DDP's reducer, when the model goes), it joins that worker while holding the GIL, and the
    run never exits (seen in 3 of 6 two-process runs without the barrier, 1 of 6 with the barrier alone). After an
    error the ranks may be in different collectives, so there is no barrier then."""
    if is_distributed():
        import torch

        if synchronize:
            torch.distributed.barrier()
            time.sleep(0.2)  # the GIL is free: the workers finish releasing the collectives' tensors
        torch.distributed.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes of a distributed run (itself in a single process), on its own device; the
    reduction runs where the backend needs it (the current GPU for NCCL)."""
    if not is_distributed():
        return tensor
    import torch

    nccl = torch.distributed.get_backend() == "nccl"
    work = tensor.to(f"cuda:{torch.cuda.current_device()}" if nccl else "cpu")
    torch.distributed.all_reduce(work)
    return work.to(tensor.device)


# ---- outputs never destroy inputs ---------------------------------------------------------------------------------

# argparse dests (and recipe keys) that name something a command reads; a local path among their values is an input
INPUT_DESTS = ("model", "baseline", "teacher", "model_extra", "model_dir", "folder", "plan", "recipe", "gguf",
               "calibration", "data", "train_data", "eval_text", "ppl", "task_dir", "tasks", "resume_from_checkpoint")
WORK_PREFIXES = (".{name}.tmp-", ".{name}.old-")  # staging siblings of an output folder (see atomic_output_dir)
WORK_DIR_PREFIX = "hf_streamline_"  # work folders under $TMPDIR
OWNER_FILE = ".hf_streamline_owner.json"  # in each such folder: the process and the output it works for
OUTPUT_OWNER: contextvars.ContextVar[str | None] = contextvars.ContextVar("hf_streamline_output", default=None)
WRITTEN: list[Path] = []  # output folders this process moved into place (what an interrupt leaves complete)


def make_work_dir(kind: str) -> Path:
    """A work folder ``$TMPDIR/hf_streamline_<kind>_*`` that records its process and the output it works for, so a
    later run on the same output (or ``hf-streamline clean``) removes it when a killed run left it behind."""
    folder = Path(tempfile.mkdtemp(prefix=f"{WORK_DIR_PREFIX}{kind}_"))
    owner = OUTPUT_OWNER.get()
    (folder / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(),
                                                 "output": str(Path(owner).absolute()) if owner else None}))
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_work_dirs(output: str | os.PathLike | None = None) -> list[Path]:
    """``$TMPDIR/hf_streamline_*`` folders whose process is gone (only those working for ``output`` when given)."""
    want = str(Path(output).absolute()) if output is not None else None
    found = []
    for p in Path(tempfile.gettempdir()).glob(f"{WORK_DIR_PREFIX}*"):
        try:
            owner = json.loads((p / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if p.is_dir() and not _pid_alive(int(owner.get("pid", -1))) and (want is None or owner.get("output") == want):
            found.append(p)
    return found


def _local_paths(value: Any) -> list[Path]:
    """The local files / folders a command-line value names: a path, ``bundled:X``, ``dataset:FILE:...``, ``NAME=FILE``
    and lists of those; Hub ids and plain strings that name nothing on disk give nothing."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _local_paths(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _local_paths(v)]
    s = str(value)
    if s.startswith("bundled:"):
        return []  # package data; never an output
    candidates = [s]
    if s.startswith("dataset:"):
        candidates = [s[len("dataset:"):].split(":")[0]]
    elif "=" in s:
        candidates.append(s.split("=", 1)[1])
    return [Path(c).resolve() for c in candidates if c and os.path.exists(c)]


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_not_an_input(output: str | os.PathLike, inputs: dict[str, Any], what: str = "{output}") -> None:
    """Refuse ``output`` when it is, contains, or lies inside any local input (``{flag or dest: value}``), whatever
    ``--overwrite`` says: writing there would destroy what the command reads."""
    out = Path(output).resolve()
    for name, value in inputs.items():
        flag = name if name.startswith("-") or "." in name else "--" + name.replace("_", "-")
        for src in _local_paths(value):
            if out == src:
                rel = "is"
            elif _within(out, src) and src.is_dir():
                rel = "lies inside"
            elif _within(src, out):
                rel = "contains"
            else:
                continue
            raise StreamlineError(f"{what} {str(output)!r} {rel} the input {flag} {str(src)!r}; writing there would "
                                  "destroy it: choose an output outside every input (--overwrite never allows this)")


def inputs_of(args: Any) -> dict[str, Any]:
    """``{dest: value}`` of every input-naming option of a parsed command line."""
    return {d: getattr(args, d) for d in INPUT_DESTS if getattr(args, d, None) is not None}


def stale_work(output: str | os.PathLike | None = None) -> list[Path]:
    """What a killed run on ``output`` left behind: the staging siblings (``.NAME.tmp-*``, ``.NAME.old-*``) and its
    ``$TMPDIR/hf_streamline_*`` work folders (with no ``output``: every dead run's work folders).  A folder a live
    process is still writing (another run on the same output) is never listed: a staging sibling counts only when
    no live process owns it (its ``OWNER_FILE``, written at creation) or it has none and is older than a day."""
    out = Path(output).absolute() if output is not None else None
    found = stale_work_dirs(out)
    if out is not None and out.parent.is_dir():
        found += [p for p in out.parent.iterdir()
                  if p.is_dir() and any(p.name.startswith(pre.format(name=out.name)) for pre in WORK_PREFIXES)
                  and not _owned_by_live_process(p)]
    return found


def remove_stale_work(output: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_work` of ``output``; returns what was removed."""
    gone = stale_work(output)
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def _owned_by_live_process(folder: Path) -> bool:
    try:
        pid = int(json.loads((folder / OWNER_FILE).read_text()).get("pid", -1))
    except (OSError, ValueError):
        import time

        return time.time() - folder.stat().st_mtime < 86400
    return pid != os.getpid() and _pid_alive(pid)


def check_output_dir(output: str | os.PathLike, overwrite: bool = False, inputs: dict[str, Any] | None = None) -> Path:
    """Refuse, *before* any long work starts: an existing output unless ``overwrite``, an output that is a file, one
    that cannot be written, and (with ``inputs``) one that is, contains or lies inside an input."""
    out = Path(output)
    if inputs:
        check_not_an_input(out, inputs)
    if out.exists() and not out.is_dir():
        raise StreamlineError("it is a file, not a folder; choose a folder path", argument="output", value=str(out))
    if out.exists() and not overwrite:
        raise StreamlineError("the folder already exists; choose another one or allow overwriting it ({overwrite})",
                              argument="output", value=str(out))
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise StreamlineError(f"{str(parent)!r} is a file, not a folder; choose another path", argument="output",
                              value=str(out))
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK | os.X_OK)):
        raise StreamlineError(f"the folder {str(out if out.exists() else parent)!r} is not writable; choose a folder "
                              "you can write to", argument="output", value=str(out))
    return out


def _output_mode() -> int:
    """The mode ``save_pretrained``'s ``os.makedirs`` gives a new folder: 0o777 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


@contextlib.contextmanager
def atomic_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; on success it is moved into place, on failure it is deleted.

    No half-written output folder is ever left at ``output``; staging folders a killed run left behind are removed
    first; the folder gets the permissions a plain ``os.makedirs`` would (the umask), not ``mkdtemp``'s 0700.
    """
    out = check_output_dir(output, overwrite).absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_work(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        (tmp / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "output": str(out)}))
    except OSError as exc:
        raise StreamlineError(f"cannot write there ({exc.strerror}); choose a folder you can write to",
                              argument="output", value=str(output)) from exc
    os.chmod(tmp, _output_mode())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / OWNER_FILE).unlink(missing_ok=True)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "x")
    os.replace(tmp, out)
    WRITTEN.append(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (same suffix); on success it replaces ``path``, on failure it is
    deleted, so a file output is whole or absent."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~(0o777 & ~_output_mode()))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def param_names_of(model: torch.nn.Module, modules: list[torch.nn.Module]) -> list[str]:
    """Names (as ``model.named_parameters()`` reports them) of the parameters of ``modules``; shared parameters are
    found by identity, so a tied ``lm_head`` maps to the input embedding's name."""
    ids = {id(p) for m in modules for p in m.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the input embedding (where inputs must go), also for models placed with device_map."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        return emb.weight.device
    return next(model.parameters()).device
