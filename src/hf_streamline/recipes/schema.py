"""The recipe: one YAML file describing a whole job, validated into the same dataclasses the CLI is made from.

A recipe is data over the same arguments the CLI exposes.  Each section maps to one sub-command, and its keys are the
fields of that command's arguments dataclass (``hf_streamline.arguments``: ``seq_len`` or ``seq-len``), so a new
option of ``hf-streamline prune`` is a new recipe key with no code here.

```yaml
model: HuggingFaceTB/SmolLM2-135M       # folder, Hub id or .gguf; omit for the bundled SmolLM2
dtype: float32                          # optional; also device, device_map, trust_remote_code
calibration: {source: train.txt, samples: 32, seq_len: 256, seed: 0, sampler: contiguous}
method: remove                          # remove | replace | merge
remove: {metric: block_influence, remove: 8}     # fields of PruneArguments (`hf-streamline prune`)
heal: {method: partial, last_k: 3, data: train.txt, max_steps: 100}   # HealArguments (`hf-streamline heal`; optional)
evaluate: {ppl: [wikitext2_test.raw], tasks: [arc_easy.jsonl], limit: 100}   # EvaluateArguments
output: streamline-out
overwrite: false
push: {repo_id: me/smollm2-pruned, private: true}   # optional; PushArguments
```

The token for ``push`` comes from ``HF_TOKEN`` or ``hf auth login``; a ``push.token`` key works but is never written
back (the saved ``streamline_recipe.yaml`` leaves it out), and local paths are saved by name
(``to_yaml(portable=True)``).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Any

from ..errors import StreamlineError

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


# top-level keys that are options of the model's loading (ModelArguments fields); a mapping value (device_map,
# max_memory) is passed on as its JSON text, as on the command line
LOADING_KEYS = ("model", "dtype", "device", "device_map", "trust_remote_code", "revision", "attn_implementation",
              "sequential", "max_memory")


def normalise_section(name: str, command: str, section: Any) -> dict[str, Any]:
    """Validate one section against its command's arguments dataclass; returns ``{field: value}``."""
    from ..arguments import arguments_class
    from ..arguments.base import values_from_mapping

    if section is None:
        return {}
    if not isinstance(section, dict):
        raise StreamlineError(f"recipe key `{name}` must be a mapping of options of `hf-streamline {command}`")
    if name != "push" and any(str(k).replace("-", "_") == "token" for k in section):
        raise StreamlineError(f"recipe key `{name}.token`: a recipe is saved beside the model it makes; give the "
                              "Hub token through HF_TOKEN (or `hf auth login`) instead")
    reserved = RUNNER_KEYS | (CALIBRATION_DESTS if name in METHOD_COMMANDS else set()) | \
        ({"token"} if name != "push" else set())
    return values_from_mapping(arguments_class(command), section, name, reserved=reserved,
                               reserved_why=" (top-level `model`, `calibration`, `output`, ...)")


def model_value(key: str, value: Any) -> Any:
    """A top-level model key's value as the option takes it (a mapping as JSON text)."""
    return json.dumps(value) if isinstance(value, dict) else value


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
    from ..arguments.base import check_value
    from ..arguments.common import CalibrationArguments, ModelArguments

    calib = data.get("calibration")
    if calib is not None:
        if not isinstance(calib, dict):
            raise StreamlineError(f"{source}: recipe key `calibration` must be a mapping with keys {list(CALIBRATION_KEYS)}")
        for k in calib:
            if k.replace("-", "_") not in CALIBRATION_KEYS:
                raise StreamlineError(f"{source}: recipe key `calibration.{k}` is not known; allowed: {list(CALIBRATION_KEYS)}")
        data["calibration"] = {k.replace("-", "_"): v for k, v in calib.items()}
        for k, v in data["calibration"].items():
            if v is not None:
                try:
                    data["calibration"][k] = check_value(CalibrationArguments, "calibration" if k == "source" else k,
                                                         v, f"calibration.{k}")
                except StreamlineError as exc:
                    raise StreamlineError(f"{source}: {exc}") from None
    for k in LOADING_KEYS + ("overwrite",):
        if data.get(k) is not None:
            try:
                if k == "overwrite":
                    if not isinstance(data[k], bool):
                        raise StreamlineError(f"recipe key `{k}` must be true or false, not {data[k]!r}")
                else:
                    check_value(ModelArguments, k, model_value(k, data[k]), k)
            except StreamlineError as exc:
                raise StreamlineError(f"{source}: {exc}") from None
    if data.get("seed") is not None and (isinstance(data["seed"], bool) or not isinstance(data["seed"], int)):
        raise StreamlineError(f"{source}: recipe key `seed` must be a whole number, not {data['seed']!r}")
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
            parse_max_memory(model_value("max_memory", data["max_memory"]))
        except StreamlineError as exc:
            raise StreamlineError(f"{source}: recipe key `max_memory`: {exc}") from None
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
