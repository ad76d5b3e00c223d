"""Checks of inputs that need no model: counts, layer lists, text files, devices and device maps.

Each check raises :class:`~hf_streamline.errors.StreamlineError` with a message that names the input and says what to
give instead; the CLI runs them before any model is loaded.  This module imports neither torch nor transformers at
import time.
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import StreamlineError

# bytes of a text file read to tell text from binary before the real read (the real read checks the whole file)
SNIFF_BYTES = 1 << 16

# argparse dest -> the smallest value that makes sense.  One table for every command: a dest means the same
# everywhere it appears (a count of samples, tokens, steps, ...).  ``--remove`` is checked by each command against the
# model's layer count (selection.check_count).
MINIMUM: dict[str, int] = {
    "samples": 1, "seq_len": 2, "batch_size": 1, "eval_batch_size": 1, "calibration_samples": 1,
    "budget_tokens": 1, "ppl_tokens": 2, "ppl_seq_len": 2, "ppl_stride": 1, "limit": 1,
    "agreement_tokens": 2, "speed_repeats": 1, "speed_prompt_len": 1, "speed_new_tokens": 1, "threads": 1,
    "check_seq_len": 1, "opset": 1, "max_examples": 1, "eval_size": 0, "lora_r": 1, "lora_alpha": 1,
    "grad_accum": 1, "eval_steps": 1, "max_steps": 0, "heal_steps": 0, "save_steps": 0, "step": 1,
    "protect_first": 0, "protect_last": 0, "block_size": 1, "block_start": 0, "width": 1, "train_seq_len": 2,
    "max_train_windows": 1, "eval_windows": 0, "blocks": 1, "skip_first_tokens": 0, "self_distill": 1,
    "self_distill_prompt_len": 1, "self_distill_batch_size": 1, "generate": 0, "generate_tokens": 1,
}
# argparse dest of a float that must be > 0
POSITIVE_FLOATS = ("epochs", "learning_rate", "temperature", "self_distill_temperature")


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_counts(args: Any) -> None:
    """Refuse non-positive (or negative) counts on an argparse namespace: ``--batch-size 0``, ``--samples -1`` ..."""
    for dest, low in MINIMUM.items():
        value = getattr(args, dest, None)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and v < low:
                raise StreamlineError(f"{flag(dest)} {v}: give a whole number of at least {low}")
    for dest in POSITIVE_FLOATS:
        v = getattr(args, dest, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not v > 0:
            raise StreamlineError(f"{flag(dest)} {v}: give a number greater than 0")


def parse_layer_list(text: str | Iterable[Any], what: str = "{layers}") -> list[int]:
    """``"3,4,7"`` -> ``[3, 4, 7]``; anything that is not a comma-separated list of whole numbers is an error."""
    items = [x.strip() for x in text.split(",")] if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, str) and not item:
            continue
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            out.append(int(item))
        except (TypeError, ValueError):
            raise StreamlineError(f"{what} {text!r}: {item!r} is not a layer index; give comma-separated whole "
                                  f"numbers, e.g. {what} 3,4,7") from None
    if not out:
        raise StreamlineError(f"{what} {text!r}: no layer index given; give comma-separated whole numbers, e.g. "
                              f"{what} 3,4,7")
    return out


def check_layer_indices(layers: Iterable[int], num_layers: int, what: str = "{layers}") -> list[int]:
    """Indices within ``0..num_layers-1`` that leave at least one layer."""
    out = sorted(set(layers))
    bad = [i for i in out if i < 0 or i >= num_layers]
    if bad:
        raise StreamlineError(f"{what}: layer index {bad[0]} is out of range: the model has layers 0..{num_layers - 1}")
    if len(out) >= num_layers:
        raise StreamlineError(f"{what}: cannot remove all {num_layers} layers: at least one must stay")
    return out


# ---- text files ---------------------------------------------------------------------------------------------------

def _existing_file(path: str | os.PathLike, what: str) -> Path:
    from .data import resolve_data_spec

    p = Path(resolve_data_spec(str(path)))
    if p.is_dir():
        raise StreamlineError(f"{what} {str(path)!r} is a folder; give a text file")
    if not p.is_file():
        raise StreamlineError(f"{what} {str(path)!r}: no such file; check the path (it is read as a file name, "
                              "never as the text itself)")
    return p


def _decode(data: bytes, path: Path, what: str, final: bool = True) -> str:
    if b"\x00" in data:
        raise StreamlineError(f"{what} {str(path)!r} is a binary file (it holds NUL bytes), not text; give a UTF-8 "
                              "text file")
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError as exc:
        raise StreamlineError(f"{what} {str(path)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                              f"{exc.start}); convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or give another "
                              "file") from None


def check_text_file(path: str | os.PathLike, what: str) -> Path:
    """An existing file whose start is UTF-8 text (cheap: reads at most 64 KiB); returns its resolved path."""
    p = _existing_file(path, what)
    with open(p, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    _decode(head, p, what, final=False)
    return p


def text_path(value: str | os.PathLike | None) -> Path | str | None:
    """A file argument as the Python API must receive it to read it as a file: a ``Path`` (``bundled:NAME`` specs
    stay strings, which the API also reads as files)."""
    if value is None or isinstance(value, Path) or str(value).startswith("bundled:"):
        return value
    return Path(value)


def read_text_file(path: str | os.PathLike, what: str = "text file") -> str:
    """The whole of a UTF-8 text file; a missing file, a folder, a binary or a non-UTF-8 file is a clear error."""
    p = _existing_file(path, what)
    return _decode(p.read_bytes(), p, what)


def check_data_source(source: str | None, what: str, allow_hub_id: bool = False) -> None:
    """A ``dataset:`` spec with valid syntax, or an existing UTF-8 file (``allow_hub_id``: or a ``NAME/DATASET``
    Hub id, which ``datasets`` checks when it loads it)."""
    if not source:
        return
    s = str(source)
    if s.startswith("dataset:"):
        from .calibration import parse_dataset_spec

        try:
            parse_dataset_spec(s)
        except StreamlineError as exc:
            raise StreamlineError(f"{what} {s!r}: {exc.args[0]}") from None
        return
    if allow_hub_id and not os.path.exists(s) and s.count("/") == 1 and not s.startswith((".", "/", "bundled:")) \
            and not s.endswith((".txt", ".json", ".jsonl", ".raw", ".md")):
        return
    check_text_file(s, what)


def check_input_path(path: str | None, what: str, folder: bool | None = None) -> None:
    """An input that must exist (``folder``: True = a folder, False = a file, None = either)."""
    if not path:
        return
    p = Path(path)
    if not p.exists():
        raise StreamlineError(f"{what} {str(path)!r}: no such {'folder' if folder else 'file' if folder is False else 'file or folder'}")
    if folder is True and not p.is_dir():
        raise StreamlineError(f"{what} {str(path)!r} is a file; give a folder")
    if folder is False and p.is_dir():
        raise StreamlineError(f"{what} {str(path)!r} is a folder; give a file")


# ---- devices ------------------------------------------------------------------------------------------------------

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device(device: Any, what: str = "{device}") -> Any:
    """A torch device this machine has: ``cuda`` without CUDA, ``cuda:3`` on a 1-GPU machine or ``gpu`` are errors."""
    if device is None:
        return None
    import torch

    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise StreamlineError(f"{what} {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise StreamlineError(f"{what} {device!r}: CUDA is not available here ({why}); use cpu "
                                  f"(or leave {what} out)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise StreamlineError(f"{what} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                  f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise StreamlineError(f"{what} {device!r}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch, dev.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise StreamlineError(f"{what} {device!r}: no {dev.type} device is available here; use --device cpu")
    return device


def _json_object(text: str, what: str, example: str) -> Any:
    """``text`` (a command-line value starting with ``{``) read as JSON; the error names the flag and an example."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StreamlineError(f"{what} {text!r} is not valid JSON ({exc.msg}); give e.g. {example}") from None


def parse_device_map(value: Any, what: str = "{device_map}") -> Any:
    """``None``, a strategy (``auto`` ...), a device (``cpu``, ``cuda:0``) or a dict ``{module: device}``.

    A string that starts with ``{`` is read as JSON, so ``--device-map '{"": "cpu"}'`` works on the command line.
    """
    if value is None:
        return None
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("{"):
            value = _json_object(value, what, "'{\"\": \"cpu\"}'")
        elif s in DEVICE_MAP_STRATEGIES:
            return s
        else:
            try:
                return check_device(s, what)
            except StreamlineError as exc:
                if "is not a device" not in str(exc):
                    raise
                raise StreamlineError(f"{what} {value!r}: give {', '.join(DEVICE_MAP_STRATEGIES)}, a device such as "
                                      "cpu or cuda:0, or a JSON object such as '{\"\": \"cpu\"}'") from None
    if not isinstance(value, dict):
        raise StreamlineError(f"{what} {value!r}: expected a string ({', '.join(DEVICE_MAP_STRATEGIES)}, or a device "
                              "such as cpu) or a dict {module name: device}, e.g. {\"\": \"cpu\"}")
    if not value:
        raise StreamlineError(f"{what} {value!r}: the map is empty; map at least the whole model, e.g. {{\"\": \"cpu\"}}")
    for key, dev in value.items():
        if not isinstance(key, str):
            raise StreamlineError(f"{what}: module name {key!r} is not a string")
        if dev not in ("disk",):
            check_device(dev, f"{what} entry {key!r}:")
    return value


def parse_max_memory(value: Any, what: str = "{max_memory}") -> dict[Any, Any] | None:
    """``None``, a size for the CPU (``"2GiB"``), or a dict ``{device: size}`` (or its JSON) as accelerate takes it:
    GPU indices (``0`` or ``"0"``), ``"cpu"``, ``"mps"``; sizes as ``"20GiB"``, ``"500MB"`` or bytes."""
    from accelerate.utils import convert_file_size_to_int

    if value is None:
        return None
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("{"):
            value = _json_object(value, what, "'{\"0\": \"20GiB\", \"cpu\": \"64GiB\"}' or one size such as 8GiB")
        else:
            value = {"cpu": s}
    if not isinstance(value, dict) or not value:
        raise StreamlineError(f"{what} {value!r}: give a size such as 8GiB or a JSON object such as "
                              "'{\"0\": \"20GiB\", \"cpu\": \"64GiB\"}'")
    out: dict[Any, Any] = {}
    for key, size in value.items():
        dev: Any = int(key) if isinstance(key, int) or (isinstance(key, str) and key.isdigit()) else key
        if not isinstance(dev, int) and dev not in ("cpu", "mps", "disk") and not str(dev).startswith(("xpu", "npu")):
            raise StreamlineError(f"{what}: {key!r} is not a device; use GPU indices (0, 1, ...), cpu or mps")
        try:
            if convert_file_size_to_int(size) <= 0:
                raise ValueError
        except (ValueError, TypeError):
            raise StreamlineError(f"{what}: {size!r} for {key!r} is not a memory size; write e.g. 20GiB or 500MB") from None
        out[dev] = size
    return out
