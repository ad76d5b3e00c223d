"""The library's messages: one logger tree under ``hf_streamline`` (``get_logger(__name__)``), never ``print``.

Used as a library, hf_streamline shows warnings only, like transformers (``set_verbosity(logging.INFO)`` shows its
progress notes too).  The command line shows notes by default, warnings only with ``--quiet`` (and no progress bars:
tqdm, transformers, datasets and huggingface_hub follow), and details with ``--verbose`` (transformers' info too):
:func:`configure_cli`.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "hf_streamline"
VERBOSITIES = ("quiet", "normal", "verbose")
_BARS = [True]  # configure_cli("quiet") turns every progress bar off, whatever a call's own `progress` says


class _Stderr(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (a redirected or captured stderr included)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (``__name__``), under the ``hf_streamline`` tree."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def _root() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    return root


def progress_bar(*args, disable: bool = False, **kwargs):
    """tqdm's bar (``tqdm.auto``; same arguments), off where ``disable`` says so or after ``--quiet``."""
    from tqdm.auto import tqdm

    return tqdm(*args, disable=not bars_on(not disable), **kwargs)


def bars_on(progress: bool = True) -> bool:
    """Whether a progress bar asked for with ``progress`` shows (for bars that others draw: the Trainer's)."""
    return bool(progress) and _BARS[0]


def set_verbosity(level: int) -> None:
    """Show hf_streamline's messages from ``level`` up (``logging.INFO``: progress notes; ``logging.WARNING``)."""
    _root().setLevel(level)


def configure_cli(verbosity: str = "normal") -> None:
    """The command line's verbosity, for hf_streamline and the libraries it drives: ``quiet`` (warnings and errors,
    no progress bars), ``normal`` (notes and progress bars; the libraries' warnings), ``verbose`` (details, and the
    libraries' info)."""
    if verbosity not in VERBOSITIES:
        raise ValueError(f"verbosity {verbosity!r}: choose from {VERBOSITIES}")
    set_verbosity({"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}[verbosity])
    _BARS[0] = verbosity != "quiet"
    libraries = {"quiet": "error", "normal": "warning", "verbose": "info"}[verbosity]
    # read by transformers / datasets when their logging starts, and by tqdm for every bar it creates
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", libraries)
    os.environ.setdefault("DATASETS_VERBOSITY", libraries)
    if verbosity == "quiet":
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for name in ("transformers", "datasets"):  # already imported: tell them directly
        module = sys.modules.get(f"{name}.utils.logging")
        if module is not None:
            getattr(module, f"set_verbosity_{libraries}")()
