"""What the workflows share: loading the model and the calibration named by a command's arguments, pre-flight checks
(everything that needs no weights, before any model loads), the base model's name.  The options themselves are
declared once, in hf_streamline.arguments; a workflow takes its command's arguments dataclass."""

from __future__ import annotations

from typing import Any, Callable

from ..calibration import CalibrationConfig, build_calibration
from ..errors import mentioning
from ..log import get_logger
Say = Callable[[str], None]
"""Where a workflow's result lines go: ``print`` from the command line."""


def note(message: str) -> None:
    """The default ``say`` of a workflow called from Python: its result lines go to hf_streamline's logger (INFO,
    shown after ``hf_streamline.log.set_verbosity(logging.INFO)``)."""
    get_logger("hf_streamline.workflows").info(message)


def load_from_args(args: Any):
    from ..loading import load_model_and_tokenizer

    return load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                                    trust_remote_code=getattr(args, "trust_remote_code", False),
                                    **loading_kwargs(args))


def loading_kwargs(args: Any) -> dict[str, Any]:
    """The large-model and Hub loading flags of ``args`` as ``load_model_and_tokenizer`` keywords."""
    return {"revision": getattr(args, "revision", None), "token": getattr(args, "token", None),
            "attn_implementation": getattr(args, "attn_implementation", None),
            "max_memory": getattr(args, "max_memory", None), "offload_folder": getattr(args, "offload_folder", None),
            "sequential": getattr(args, "sequential", False), "quantize": getattr(args, "quantize", None)}


def join_process_group(args: Any) -> None:
    """Under ``accelerate launch`` (several processes): set up the process group, and run each process on its own
    device unless ``--device`` / ``--device-map`` say otherwise.  A no-op in a single process."""
    from ..utils import process_rank

    if process_rank()[1] <= 1:
        return
    from accelerate import PartialState

    state = PartialState()
    if args.device is None and args.device_map is None and state.device.type != "cpu":
        args.device = str(state.device)


def refuse_sequential(args: Any, why: str) -> None:
    """Commands that train (heal, compare-healing) need every trainable weight in memory: ``--sequential`` and
    ``--max-memory`` are refused there with what to do instead (the auto mode stays off)."""
    from ..errors import StreamlineError

    if getattr(args, "sequential", None) or getattr(args, "max_memory", None):
        name = "sequential" if getattr(args, "sequential", None) else "max_memory"
        raise StreamlineError(f"this command {why}, which needs its weights in memory; drop {{{name}}} (run several "
                              "processes with `accelerate launch` to spread a large model)", argument=name,
                              mentions=(name,))
    args.sequential = False


def preflight_model(args: Any, attr: str = "model", what: str | None = None):
    """Check a model argument without loading the weights: device, device map, config.json, weight files,
    tokenizer files; returns the config (its layer count checks ``--remove``, ``--layers``, ``--block-size`` ...)."""
    from ..loading import inspect_model
    from ..validation import check_device, parse_device_map

    from ..validation import parse_max_memory

    check_device(getattr(args, "device", None))
    parse_device_map(getattr(args, "device_map", None))
    parse_max_memory(getattr(args, "max_memory", None))
    own = attr == "model"  # revision / token are the model's
    with mentioning(attr):
        return inspect_model(getattr(args, attr), trust_remote_code=getattr(args, "trust_remote_code", False),
                             what=what or "{%s}" % attr, revision=getattr(args, "revision", None) if own else None,
                             token=getattr(args, "token", None) if own else None)


def model_layer_count(config: Any) -> int | None:
    from ..loading import config_num_layers

    return config_num_layers(config)


def check_calibration_args(args: Any) -> None:
    """``--calibration``: a ``dataset:`` spec with valid syntax or an existing UTF-8 file (before any model loads)."""
    from ..validation import check_data_source

    with mentioning("calibration"):
        check_data_source(getattr(args, "calibration", None), "{calibration}")


def check_text_args(args: Any, *dests: str) -> None:
    """Text-file arguments (``--eval-text`` ...) exist and are UTF-8 text (checked before any model loads); the
    commands pass them on as ``text_path(value)``, so the Python API reads them as files, never as the text itself."""
    from ..validation import check_text_file

    for dest in dests:
        value = getattr(args, dest, None)
        if value:
            with mentioning(dest):
                check_text_file(value, "{%s}" % dest)


def calibration_from_args(args: Any, tokenizer: Any):
    if not args.calibration:
        return None
    cfg = CalibrationConfig(source=args.calibration, n_samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                            sampler=args.sampler, text_column=args.text_column)
    return build_calibration(tokenizer, args.calibration, cfg)


def model_name(args: Any) -> str:
    """The base model as plans and cards record it: ``--base-model``, else the folder's ``BASE_MODEL`` marker or
    the Hub id, else the local folder's *name* (never an absolute path of this machine)."""
    from ..loading import base_model_name
    from ..portable import portable_model_name

    if getattr(args, "base_model", None):
        return args.base_model
    return portable_model_name(base_model_name(args.model))
