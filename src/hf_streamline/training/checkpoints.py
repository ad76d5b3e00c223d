"""The training folder of ``heal`` and ``replace`` (``OUTPUT.training/`` by default): which of its checkpoints can
resume, ``--resume-from-checkpoint PATH|latest``, and what happens to it when the command ends.

- A checkpoint *resumes* when it holds, beside the trained parameters (``trained_parameters.safetensors`` and
  ``streamline_checkpoint.json``), the trainer state, the optimizer and the scheduler (``save_only_model=False``).
  Checkpoints written only to pick the best validation step hold the trained parameters alone and do not resume.
- :func:`keep_checkpoints_on_failure` wraps a command's ``run``: after a successful save it removes the checkpoints
  (and the folder, when nothing else is left in it) unless ``--keep-checkpoints``; on failure it keeps the resumable
  ones and says, in the same one line, how to continue.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any, Callable

from ..errors import StreamlineError
from ..log import get_logger

TRAINED_WEIGHTS_NAME = "trained_parameters.safetensors"  # a checkpoint's trained parameters (StreamlineTrainer)
CHECKPOINT_MANIFEST_NAME = "streamline_checkpoint.json"  # and what they belong to

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
RESUME_FILES = (TRAINER_STATE, "optimizer.pt", "scheduler.pt")
LATEST = "latest"


def training_dir(output: str | os.PathLike, train_output: str | os.PathLike | None = None) -> Path:
    """Where a command's checkpoints go: ``train_output``, or ``OUTPUT.training`` beside the output folder."""
    return Path(train_output) if train_output else Path(f"{os.fspath(output).rstrip('/' + os.sep)}.training")


def _step(folder: Path) -> int:
    m = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", folder.name)
    return int(m.group(1)) if m else -1


def is_streamline_checkpoint(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / TRAINED_WEIGHTS_NAME).is_file() and (folder / CHECKPOINT_MANIFEST_NAME).is_file()


def is_resumable(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return is_streamline_checkpoint(folder) and all((folder / f).is_file() for f in RESUME_FILES)


def checkpoints(train_dir: str | os.PathLike, resumable_only: bool = False) -> list[Path]:
    """The ``checkpoint-N`` folders this trainer wrote in ``train_dir``, oldest step first."""
    d = Path(train_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and _step(p) >= 0 and is_streamline_checkpoint(p)]
    if resumable_only:
        found = [p for p in found if is_resumable(p)]
    return sorted(found, key=_step)


def latest_checkpoint(train_dir: str | os.PathLike) -> Path | None:
    found = checkpoints(train_dir, resumable_only=True)
    return found[-1] if found else None


def check_resumable(folder: str | os.PathLike, flag: str = "--resume-from-checkpoint") -> Path:
    """``folder`` if training can resume from it; otherwise one clear :class:`StreamlineError`."""
    p = Path(folder)
    if not p.is_dir():
        raise StreamlineError(f"{flag} {str(folder)!r}: no such folder; give a checkpoint-N folder of the training "
                              f"folder, or {flag} {LATEST}")
    if not is_streamline_checkpoint(p):
        raise StreamlineError(f"{flag} {str(folder)!r} is not a checkpoint of hf_streamline's trainer (no "
                              f"{TRAINED_WEIGHTS_NAME} / {CHECKPOINT_MANIFEST_NAME}); give a checkpoint-N folder it wrote")
    missing = [f for f in RESUME_FILES if not (p / f).is_file()]
    if missing:
        raise StreamlineError(f"{flag} {str(folder)!r} holds only the trained weights (no {', '.join(missing)}): it was "
                              "written to pick the best validation step, not to resume; train with --save-steps N to "
                              "write checkpoints that resume")
    return p


def resolve_resume(value: str | os.PathLike | bool | None, train_dir: str | os.PathLike | None,
                   flag: str = "--resume-from-checkpoint") -> str | None:
    """``None`` (no resume), the newest resumable checkpoint of ``train_dir`` for ``latest`` / ``True``, or the
    given checkpoint folder, checked (before any model is loaded)."""
    if value is None or value is False or value == "":
        return None
    if value is True or str(value) == LATEST:
        if train_dir is None:
            raise StreamlineError(f"{flag} {LATEST} needs the training folder the checkpoints were written to "
                                  "(output_dir=...); or give the checkpoint-N folder itself")
        newest = latest_checkpoint(train_dir)
        if newest is None:
            others = checkpoints(train_dir)
            why = (f"its checkpoints ({', '.join(p.name for p in others)}) hold only the trained weights; train with "
                   "--save-steps N to write checkpoints that resume" if others else
                   "train with --save-steps N to write checkpoints there, or start without "
                   f"{flag}")
            raise StreamlineError(f"{flag} {LATEST}: {str(train_dir)!r} holds no checkpoint to resume from; {why}")
        return str(newest)
    return str(check_resumable(value, flag))


def remove_checkpoints(train_dir: str | os.PathLike, only: set[Path] | None = None) -> None:
    """Delete the trainer's ``checkpoint-N`` folders in ``train_dir`` (those in ``only``, when given), then the
    folder itself if nothing else is left in it; anything else a user keeps there is never touched."""
    d = Path(train_dir)
    for p in checkpoints(d):
        if only is None or p in only:
            shutil.rmtree(p, ignore_errors=True)
    try:
        d.rmdir()
    except OSError:
        pass  # absent, or holds something that is not ours


def check_fresh_start(train_dir: str | os.PathLike, resume: str | None, overwrite: bool,
                      flag: str = "--resume-from-checkpoint") -> None:
    """Before a run that does not resume: refuse a training folder that holds another run's checkpoints (they would
    mix with this run's), unless ``overwrite``, which removes them."""
    if resume is not None:
        return
    found = checkpoints(train_dir)
    if not found:
        return
    if overwrite:
        remove_checkpoints(train_dir)
        return
    if any(is_resumable(p) for p in found):
        raise _said(StreamlineError(f"the training folder {str(train_dir)!r} holds the checkpoints of an earlier run (newest: "
                              f"{found[-1].name}); continue it with {flag} {LATEST}, or pass --overwrite to start over "
                              "(this removes them)"))
    raise _said(StreamlineError(f"the training folder {str(train_dir)!r} holds the checkpoints of an earlier run "
                          f"({', '.join(p.name for p in found)}: best-validation weights, which do not resume); pass "
                          "--overwrite to remove them, or choose another --train-output"))


def _said(exc: BaseException) -> BaseException:
    """Mark an error that already says what to do with the checkpoints (no resume hint is added to it)."""
    exc.streamline_resume_hint = True
    return exc


def resume_command(command: str, argv: list[str] | None, flag: str = "--resume-from-checkpoint") -> str:
    """The command line that continues ``argv`` from its newest checkpoint."""
    if argv is None:
        return f"the same hf-streamline {command} command with {flag} {LATEST}"
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    if out[:1] == [command]:
        out = out[1:]
    return shlex.join(["hf-streamline", command, *out, flag, LATEST])


def keep_checkpoints_on_failure(command: str) -> Callable[[Callable[[Any], int]], Callable[[Any], int]]:
    """Decorate a workflow's ``run(args, **kwargs)`` (args with ``output``, ``train_output``, ``keep_checkpoints``, ``argv``):
    on success remove the training folder's checkpoints unless ``--keep-checkpoints``; on failure keep the ones that
    resume and add to the error how to continue (one line, whatever the failure)."""

    def wrap(run: Callable[[Any], int]) -> Callable[[Any], int]:
        @functools.wraps(run)
        def wrapped(args: Any, *more: Any, **kwargs: Any) -> int:
            if not getattr(args, "output", None):
                return run(args, *more, **kwargs)
            train_dir = training_dir(args.output, getattr(args, "train_output", None))
            before = set(checkpoints(train_dir))
            try:
                rc = run(args, *more, **kwargs)
            except BaseException as exc:
                _after_failure(exc, command, args, train_dir, before)
                raise
            if rc == 0 and not getattr(args, "keep_checkpoints", False):
                from ..utils import is_main_process

                if is_main_process():  # under `accelerate launch` only the main process writes (and removes)
                    remove_checkpoints(train_dir)
            return rc

        return wrapped

    return wrap


def _after_failure(exc: BaseException, command: str, args: Any, train_dir: Path, before: set[Path]) -> None:
    from ..utils import WRITTEN

    out = Path(args.output).absolute()
    if any(Path(w).absolute() == out for w in WRITTEN):  # saved before the failure: the checkpoints are spent
        if not getattr(args, "keep_checkpoints", False):
            remove_checkpoints(train_dir)
        return
    newest = latest_checkpoint(train_dir)
    if newest is None:  # nothing this run could continue from: drop what it wrote, keep what was there before
        remove_checkpoints(train_dir, only=set(checkpoints(train_dir)) - before)
        return
    if getattr(exc, "streamline_resume_hint", False):
        return
    hint = (f"the checkpoints are kept in {str(train_dir)!r} (newest: {newest.name}); continue with: "
            f"{resume_command(command, getattr(args, 'argv', None))}")
    if isinstance(exc, StreamlineError) and exc.args:
        exc.args = (f"{exc.args[0]}; {hint}",) + exc.args[1:]
    elif isinstance(exc, KeyboardInterrupt):
        exc.args = (hint,)  # the command line prints it in its one "interrupted; ..." line
    else:
        get_logger(__name__).warning(f"hf-streamline {command}: {hint}")
    try:
        exc.streamline_resume_hint = True
    except AttributeError:  # pragma: no cover - exceptions without a __dict__
        pass


# ---- command line --------------------------------------------------------------------------------------------------

def checkpoint_plan(args: Any, iterative: bool = False) -> tuple[Path, str | None]:
    """The training folder and the checkpoint to resume from of a parsed command line, checked before any model
    is loaded; a fresh run refuses a training folder holding an earlier run's checkpoints unless ``--overwrite``."""
    if iterative and (getattr(args, "save_steps", 0) or getattr(args, "resume_from_checkpoint", None)):
        raise _said(StreamlineError("--save-steps / --resume-from-checkpoint do not apply to iterative healing "
                                    "(--remove): each step trains anew; drop them, or heal a pruned model without "
                                    "--remove"))
    save, every = int(getattr(args, "save_steps", 0) or 0), getattr(args, "eval_steps", None)
    if save > 0 and every and save % every and not getattr(args, "no_best_checkpoint", True) \
            and getattr(args, "eval_size", None) != 0:  # heal's best-checkpoint selection (healing.api has it too)
        raise StreamlineError(f"--save-steps {save} must be a multiple of --eval-steps {every} (the best validation "
                              "step is chosen among the saved checkpoints), or pass --no-best-checkpoint")
    train_dir = training_dir(args.output, getattr(args, "train_output", None))
    if train_dir.exists() and not train_dir.is_dir():
        raise StreamlineError(f"the training folder {str(train_dir)!r} is a file; remove it or choose --train-output")
    resume = resolve_resume(getattr(args, "resume_from_checkpoint", None), train_dir)
    check_fresh_start(train_dir, resume, bool(getattr(args, "overwrite", False)))
    return train_dir, resume
