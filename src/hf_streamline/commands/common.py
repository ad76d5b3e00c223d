"""What the commands share after parsing: loading the model, the calibration, pre-flight checks, the base model's name
(the options themselves are declared once, in hf_streamline.arguments)."""

from __future__ import annotations

import argparse
from typing import Any

from ..calibration import CalibrationConfig, build_calibration


class DeprecatedFlag(argparse.Action):
    """An old spelling of an option, kept for one release (README: "One name per concept"): hidden from ``--help``, it
    stores into the new option's dest and warns.  A recipe key spelt like it (``eval_tokens``) is read as the new key
    (hf_streamline.recipes.schema)."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from ..log import get_logger

        get_logger(__name__).warning(f"{option_string} is deprecated and will be removed in the next release; use "
                                     f"{self.new}")
        setattr(namespace, self.dest, values)


def add_deprecated_flag(p: argparse.ArgumentParser | Any, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """``old`` as a deprecated spelling of the option ``new`` (whose dest is ``dest``; ``type`` etc. as for it)."""
    p.add_argument(old, dest=dest, action=DeprecatedFlag, new=new, **kwargs)


def load_from_args(args: argparse.Namespace):
    from ..loading import load_model_and_tokenizer

    return load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                                    trust_remote_code=getattr(args, "trust_remote_code", False),
                                    **loading_kwargs(args))


def loading_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The large-model and Hub loading flags of ``args`` as ``load_model_and_tokenizer`` keywords."""
    return {"revision": getattr(args, "revision", None), "token": getattr(args, "token", None),
            "attn_implementation": getattr(args, "attn_implementation", None),
            "max_memory": getattr(args, "max_memory", None), "offload_folder": getattr(args, "offload_folder", None),
            "sequential": getattr(args, "sequential", False), "quantize": getattr(args, "quantize", None)}


def join_process_group(args: argparse.Namespace) -> None:
    """Under ``accelerate launch`` (several processes): set up the process group, and run each process on its own
    device unless ``--device`` / ``--device-map`` say otherwise.  A no-op in a single process."""
    from ..utils import process_rank

    if process_rank()[1] <= 1:
        return
    from accelerate import PartialState

    state = PartialState()
    if args.device is None and args.device_map is None and state.device.type != "cpu":
        args.device = str(state.device)


def refuse_sequential(args: argparse.Namespace, why: str) -> None:
    """Commands that train (heal, compare-healing) need every trainable weight in memory: ``--sequential`` and
    ``--max-memory`` are refused there with what to do instead (the auto mode stays off)."""
    from ..errors import StreamlineError

    if getattr(args, "sequential", None) or getattr(args, "max_memory", None):
        flag = "--sequential" if getattr(args, "sequential", None) else "--max-memory"
        raise StreamlineError(f"{flag}: this command {why}, which needs its weights in memory; drop {flag} (run "
                              "several processes with `accelerate launch` to spread a large model)")
    args.sequential = False


def preflight_model(args: argparse.Namespace, attr: str = "model", what: str | None = None):
    """Check a model argument without loading the weights: device, device map, config.json, weight files,
    tokenizer files; returns the config (its layer count checks ``--remove``, ``--layers``, ``--block-size`` ...)."""
    from ..loading import inspect_model
    from ..validation import check_device, parse_device_map

    from ..validation import parse_max_memory

    check_device(getattr(args, "device", None))
    parse_device_map(getattr(args, "device_map", None))
    parse_max_memory(getattr(args, "max_memory", None))
    own = attr == "model"  # --revision / --token are --model's
    return inspect_model(getattr(args, attr), trust_remote_code=getattr(args, "trust_remote_code", False),
                         what=what or "--" + attr.replace("_", "-"), revision=getattr(args, "revision", None) if own else None,
                         token=getattr(args, "token", None) if own else None)


def model_layer_count(config: Any) -> int | None:
    from ..loading import config_num_layers

    return config_num_layers(config)


def check_calibration_args(args: argparse.Namespace) -> None:
    """``--calibration``: a ``dataset:`` spec with valid syntax or an existing UTF-8 file (before any model loads)."""
    from ..validation import check_data_source

    check_data_source(getattr(args, "calibration", None), "--calibration")


def check_text_args(args: argparse.Namespace, *dests: str) -> None:
    """Text-file arguments (``--eval-text`` ...) exist and are UTF-8 text (checked before any model loads); the
    commands pass them on as ``text_path(value)``, so the Python API reads them as files, never as the text itself."""
    from ..validation import check_text_file

    for dest in dests:
        value = getattr(args, dest, None)
        if value:
            check_text_file(value, "--" + dest.replace("_", "-"))


def calibration_from_args(args: argparse.Namespace, tokenizer: Any):
    if not args.calibration:
        return None
    cfg = CalibrationConfig(source=args.calibration, n_samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                            sampler=args.sampler, text_column=args.text_column)
    return build_calibration(tokenizer, args.calibration, cfg)


def model_name(args: argparse.Namespace) -> str:
    """The base model as plans and cards record it: ``--base-model``, else the folder's ``BASE_MODEL`` marker or
    the Hub id, else the local folder's *name* (never an absolute path of this machine)."""
    from ..loading import base_model_name
    from ..portable import portable_model_name

    if getattr(args, "base_model", None):
        return args.base_model
    return portable_model_name(base_model_name(args.model))
