"""The recipe: one YAML file describing a whole job, validated against the CLI commands it drives.

A recipe is data over the same functions the CLI exposes.  Each section maps to one sub-command, and its keys are that
command's options (``seq_len`` or ``seq-len``), so the allowed keys and values are read from the command's own
argument parser: a new option of ``hf-streamline prune`` is a new recipe key with no code here.

```yaml
model: HuggingFaceTB/SmolLM2-135M       # folder, Hub id or .gguf; omit for the bundled SmolLM2
dtype: float32                          # optional; also device, device_map, trust_remote_code
calibration: {source: train.txt, samples: 32, seq_len: 256, seed: 0, sampler: contiguous}
method: remove                          # remove | replace | merge
remove: {method: block_influence, remove: 8}     # options of `hf-streamline prune`
heal: {method: partial, last_k: 3, data: train.txt, max_steps: 100}   # options of `hf-streamline heal` (optional)
evaluate: {ppl: [wikitext2_test.raw], tasks: [arc_easy.jsonl], limit: 100}   # options of `hf-streamline evaluate`
output: streamline-out
overwrite: false
push: {repo_id: me/smollm2-pruned, private: true}   # optional; options of `hf-streamline push`
```

The token for ``push`` comes from ``HF_TOKEN`` or ``hf auth login``; a ``push.token`` key works but is never written
back (the saved ``streamline_recipe.yaml`` leaves it out), and local paths are saved by name
(``to_yaml(portable=True)``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from dataclasses import dataclass
from typing import Any

from ..commands.common import DeprecatedFlag
from ..errors import StreamlineError
from ..log import get_logger

# method -> the CLI command that performs it
METHOD_COMMANDS: dict[str, str] = {"remove": "prune", "replace": "replace", "merge": "merge"}
# optional stage sections -> CLI command
STAGE_COMMANDS: dict[str, str] = {"heal": "heal", "evaluate": "evaluate", "push": "push"}
TOP_LEVEL_KEYS: dict[str, str] = {
    "model": "base model: folder, Hub id or .gguf (omit for the bundled SmolLM2)",
    "dtype": "float32 | bfloat16 | float16 | auto",
    "device": "cpu, cuda, ...",
    "device_map": "accelerate device map, e.g. auto",
    "trust_remote_code": "allow custom modeling code",
    "revision": "Hub branch, tag or commit of the model",
    "attn_implementation": "eager | sdpa | flash_attention_2 | ...",
    "sequential": "true: every calibration pass reads one layer at a time (not for heal, which trains)",
    "max_memory": "memory per device, e.g. 8GiB or {0: 20GiB, cpu: 64GiB} (not for heal)",
    "calibration": "mapping: source, samples, seq_len, seed, sampler, text_column, batch_size",
    "method": f"one of {sorted(METHOD_COMMANDS)}",
    **{m: f"options of `hf-streamline {c}`" for m, c in METHOD_COMMANDS.items()},
    **{s: f"options of `hf-streamline {c}`" for s, c in STAGE_COMMANDS.items()},
    "output": "output folder",
    "overwrite": "replace an existing output folder",
    "seed": "default seed for every stage",
}
CALIBRATION_KEYS = ("source", "samples", "seq_len", "seed", "sampler", "text_column", "batch_size")
# keys the runner fills in itself: a recipe must not set them inside a section
RUNNER_KEYS = {"model", "model_path", "output", "overwrite", "dtype", "device", "device_map", "trust_remote_code",
               "folder", "dir", "plan", "revision", "attn_implementation", "sequential", "max_memory",
               "verbosity"}  # (`hf-streamline run --quiet` sets the verbosity of the whole run)
# top-level loading keys the training stages do not take (they need every weight in memory)
NOT_FOR_TRAINING = ("sequential", "max_memory")
# for the structural method, the top-level `calibration` mapping fills these (its `source` is `--calibration`)
CALIBRATION_DESTS = {"calibration" if k == "source" else k for k in CALIBRATION_KEYS}


def command_parser(name: str) -> argparse.ArgumentParser:
    from ..cli import build_parser

    parser = build_parser([name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if name not in sub.choices:
        raise StreamlineError(f"the command `hf-streamline {name}` is not available in this installation")
    return sub.choices[name]


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    out: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if not a.option_strings or a.dest == "help" or isinstance(a, DeprecatedFlag):
            continue
        if a.dest in out and type(a) is argparse._StoreConstAction:  # flags sharing a dest: remember them all
            continue
        if type(a) is argparse._StoreConstAction:
            a.siblings = [b for b in parser._actions if b.dest == a.dest and b.option_strings]  # type: ignore[attr-defined]
        out[a.dest] = a
    return out


def _check_value(where: str, action: argparse.Action, value: Any) -> None:
    values = value if isinstance(value, list) else [value]
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise StreamlineError(f"recipe key `{where}` must be true or false, not {value!r}")
        return
    if type(action) is argparse._StoreConstAction:  # several flags sharing one dest (--load-in-4bit / -8bit)
        consts = sorted(str(a.const) for a in getattr(action, "siblings", [action]))
        if str(value) not in consts:
            raise StreamlineError(f"recipe key `{where}`: {value!r} is not allowed; allowed values: {consts}")
        return
    if isinstance(value, list) and action.nargs in (None, "?") and not isinstance(action, argparse._AppendAction):
        raise StreamlineError(f"recipe key `{where}` takes one value, not a list")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise StreamlineError(f"recipe key `{where}` must be true or false, not {value!r}")
        return
    for v in values:
        if isinstance(v, (dict, list)):
            raise StreamlineError(f"recipe key `{where}` takes a scalar value, not {type(v).__name__}")
        if action.choices is not None and v not in action.choices:
            raise StreamlineError(f"recipe key `{where}`: {v!r} is not allowed; allowed values: {sorted(action.choices)}")
        if action.type is not None and v is not None:
            try:
                action.type(str(v))
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                raise StreamlineError(f"recipe key `{where}`: {v!r} is not a valid {getattr(action.type, '__name__', 'value')}") from None


def deprecated_keys(parser: argparse.ArgumentParser) -> dict[str, DeprecatedFlag]:
    """Recipe keys spelt like a deprecated flag (``eval_tokens`` for ``--eval-tokens``) -> that flag's action."""
    return {o.lstrip("-").replace("-", "_"): a for a in parser._actions if isinstance(a, DeprecatedFlag)
            for o in a.option_strings}


def normalise_section(name: str, command: str, section: Any) -> dict[str, Any]:
    """Validate one section against its command's parser; returns it with keys as option dests."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise StreamlineError(f"recipe key `{name}` must be a mapping of options of `hf-streamline {command}`")
    parser = command_parser(command)
    actions, old = _option_actions(parser), deprecated_keys(parser)
    reserved = RUNNER_KEYS | (CALIBRATION_DESTS if name in METHOD_COMMANDS else set())
    allowed = sorted(d for d in actions if d not in reserved)
    out = {}
    for key, value in section.items():
        dest = str(key).replace("-", "_")
        if dest in old and dest not in actions:
            new = old[dest].dest
            get_logger(__name__).warning(f"recipe key `{name}.{key}` is deprecated and will be removed in the next "
                                         f"release; write `{name}.{new}`")
            if new in section or new.replace("_", "-") in section:
                raise StreamlineError(f"recipe keys `{name}.{key}` and `{name}.{new}` name the same option; keep "
                                      f"`{new}`")
            dest = new
        if dest in reserved and dest in actions:
            raise StreamlineError(f"recipe key `{name}.{key}` is set by the recipe itself (top-level `model`, "
                                  "`calibration`, `output`, ...); remove it from this section")
        if dest == "token" and name != "push":
            raise StreamlineError(f"recipe key `{name}.token`: a recipe is saved beside the model it makes; give the "
                                  "Hub token through HF_TOKEN (or `hf auth login`) instead")
        if dest not in actions:
            raise StreamlineError(f"recipe key `{name}.{key}` is not known; allowed keys for `{name}` "
                                  f"(options of `hf-streamline {command}`): {allowed}")
        _check_value(f"{name}.{key}", actions[dest], value)
        out[dest] = value
    return out


@dataclass
class Recipe:
    data: dict[str, Any]

    @property
    def method(self) -> str:
        return self.data["method"]

    @property
    def output(self) -> str:
        return self.data["output"]

    def to_yaml(self, portable: bool = False) -> str:
        """The recipe as YAML.  A ``push.token`` is never part of it (a token belongs in ``HF_TOKEN`` or the stored
        login, not in a file).  ``portable``: also name local files by their name or ``bundled:`` spec instead of an
        absolute path of this machine (the saved ``streamline_recipe.yaml``, which is pushed with the model)."""
        import yaml

        data = without_secrets(self.data)
        if portable:
            from ..portable import portable_model_name, portable_value

            data = portable_value(data)
            if data.get("model") is not None:
                data["model"] = portable_model_name(self.data["model"])
        return yaml.safe_dump(data, sort_keys=False)


SECRET_KEYS = {"push": ("token",)}


def without_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of recipe ``data`` without the keys that hold secrets (``push.token``)."""
    out = copy.deepcopy(data)
    for section, keys in SECRET_KEYS.items():
        if isinstance(out.get(section), dict):
            for k in keys:
                out[section].pop(k, None)
    return out


def validate_recipe(raw: Any, source: str = "recipe") -> Recipe:
    """Validate a parsed recipe; every error names the key and the allowed keys or values."""
    if not isinstance(raw, dict):
        raise StreamlineError(f"{source}: a recipe is a YAML mapping (key: value), got {type(raw).__name__}")
    data = copy.deepcopy(raw)
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise StreamlineError(f"{source}: recipe key `{unknown[0]}` is not known; allowed top-level keys: {sorted(TOP_LEVEL_KEYS)}")
    method = data.get("method")
    if method not in METHOD_COMMANDS:
        raise StreamlineError(f"{source}: recipe key `method` must be one of {sorted(METHOD_COMMANDS)}, got {method!r}")
    for other in METHOD_COMMANDS:
        if other != method and other in data:
            raise StreamlineError(f"{source}: recipe has a `{other}` section but `method` is {method!r}; remove one")
    if not data.get("output"):
        raise StreamlineError(f"{source}: recipe key `output` (the output folder) is required")
    calib = data.get("calibration")
    if calib is not None:
        if not isinstance(calib, dict):
            raise StreamlineError(f"{source}: recipe key `calibration` must be a mapping with keys {list(CALIBRATION_KEYS)}")
        for k in calib:
            if k.replace("-", "_") not in CALIBRATION_KEYS:
                raise StreamlineError(f"{source}: recipe key `calibration.{k}` is not known; allowed: {list(CALIBRATION_KEYS)}")
        from ..calibration import SAMPLERS

        if calib.get("sampler") is not None and calib["sampler"] not in SAMPLERS:
            raise StreamlineError(f"{source}: recipe key `calibration.sampler`: {calib['sampler']!r} is not allowed; "
                                  f"allowed values: {list(SAMPLERS)}")
        for k in ("samples", "seq_len", "seed", "batch_size"):
            if k in calib and not isinstance(calib[k], int):
                raise StreamlineError(f"{source}: recipe key `calibration.{k}` must be an integer, got {calib[k]!r}")
        data["calibration"] = {k.replace("-", "_"): v for k, v in calib.items()}
    if data.get("dtype") is not None:
        from ..utils import dtype_name

        try:
            dtype_name(data["dtype"])
        except StreamlineError as exc:
            raise StreamlineError(f"{source}: recipe key `dtype`: {exc}") from None
    data[method] = normalise_section(method, METHOD_COMMANDS[method], data.get(method) or {})
    for stage, command in STAGE_COMMANDS.items():
        if stage in data:
            data[stage] = normalise_section(stage, command, data[stage])
    if data.get("max_memory") is not None:
        from ..validation import parse_max_memory

        try:
            parse_max_memory(json.dumps(data["max_memory"]) if isinstance(data["max_memory"], dict) else data["max_memory"])
        except StreamlineError as exc:
            raise StreamlineError(f"{source}: recipe key `max_memory`: {exc}") from None
    for k in ("overwrite", "trust_remote_code", "sequential"):
        if k in data and not isinstance(data[k], bool):
            raise StreamlineError(f"{source}: recipe key `{k}` must be true or false")
    return Recipe(data)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a recipe file; ``bundled:recipes/NAME.yaml`` names one shipped with the package."""
    import yaml

    from ..data import PREFIX, resolve_data_spec

    if str(path).startswith(PREFIX):
        path = resolve_data_spec(path)
    if not os.path.isfile(path):
        raise StreamlineError(f"recipe {str(path)!r}: no such file")
    with open(path, encoding="utf-8") as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise StreamlineError(f"recipe {str(path)!r} is not valid YAML: {exc}") from None
    return validate_recipe(raw, source=str(path))
