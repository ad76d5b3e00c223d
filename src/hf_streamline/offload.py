"""Layer-by-layer onloading: calibration passes on models larger than the memory they run in.

``--sequential`` loads a model whose embeddings, final norm and head sit on the compute device and whose decoder
layers stay in their safetensors shards ("disk" in accelerate's device map; with a safetensors checkpoint nothing is
copied, transformers points accelerate's offload index at the shards).  accelerate's hooks read each sub-module's
weights right before it runs and drop them right after, so every pass that drives the model -- scoring, similarity /
CKA, linear-replacement fits, SLM trials, the KL search, replacement activation capture, evaluation -- runs unchanged,
batch by batch, with peak memory ~ one layer + embeddings/head + the hidden states of one batch, and gives the same
numbers as the whole-model pass (the same arithmetic on the same weights).

Why batch-major and not layer-major (llm-compressor moves every calibration batch through layer ``i`` before layer
``i+1``): our collectors keep per-batch state across layers (the block similarity of layers ``l..m`` needs layer
``l``'s input until layer ``m``'s output), which layer-major order would have to hold for *every* batch at once.  The
price is that a layer's weights are read once per batch -- from the OS page cache on CPU, a host-to-device copy on a
GPU; a larger ``--batch-size`` reads them fewer times.

Operations that change a layer's weights (a merge, a fold, a replacement initialised from a layer) first
:func:`onload` the layers they touch; ``save_pretrained`` of an offloaded model writes shard by shard.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

# Shard size when an offloaded model is saved: transformers materialises one shard at a time.
OFFLOADED_SHARD_SIZE = "1GB"
# Fraction of the free memory a whole-model load may take before ``--sequential`` turns itself on.
FIT_FRACTION = 0.8


def sequential_device_map(model_meta: nn.Module, device: str = "cpu") -> dict[str, str]:
    """accelerate device map that keeps every decoder layer (and an untied output head) on ``disk`` and everything
    else on ``device``.

    ``model_meta``: the model built on the meta device (its structure only).  The decoder-layer path comes from the
    architecture table, so every supported architecture (and remote-code models the table finds) works."""
    from .architecture import find_decoder_layers_path, get_attr_path

    path = find_decoder_layers_path(model_meta)
    n = len(get_attr_path(model_meta, path))
    device_map: dict[str, str] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            device_map[prefix + name] = device
        for name, child in module.named_children():
            full = prefix + name
            if full == path:
                device_map.update({f"{full}.{i}": "disk" for i in range(n)})
            elif path.startswith(full + "."):
                walk(child, full + ".")
            else:
                device_map[full] = device

    walk(model_meta, "")
    head = _untied_head_name(model_meta)
    if head in device_map:  # read only by the passes that need logits (KL, perplexity), like a layer
        device_map[head] = "disk"
    return device_map


def _untied_head_name(model_meta: nn.Module) -> str | None:
    """Module name of the output head when it does not share its weight with the input embeddings."""
    from .architecture import text_config

    if getattr(text_config(model_meta.config), "tie_word_embeddings", getattr(model_meta.config, "tie_word_embeddings", True)):
        return None
    head = model_meta.get_output_embeddings() if hasattr(model_meta, "get_output_embeddings") else None
    if head is None:
        return None
    return next((name for name, m in model_meta.named_modules() if m is head), None)


def meta_model(config: Any, trust_remote_code: bool = False) -> nn.Module:
    """The model's structure on the meta device (no memory, no weights read)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def checkpoint_bytes(folder: str | os.PathLike, dtype: torch.dtype | None = None) -> int | None:
    """Bytes of the weights in a local safetensors folder (at ``dtype`` when given, else as stored), read from the
    shard headers; ``None`` when the folder has no safetensors weights."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                numel = 1
                for d in sl.get_shape():
                    numel *= int(d)
                if dtype is not None and sl.get_dtype() in ("F32", "F16", "BF16", "F64"):
                    size = torch.empty((), dtype=dtype).element_size()
                else:
                    size = _SAFETENSORS_SIZES.get(sl.get_dtype(), 4)
                total += numel * size
    return total


_SAFETENSORS_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def free_memory(device: str | torch.device | None) -> int:
    """Free bytes on ``device``: the GPU's free memory, else the machine's available RAM."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def local_snapshot(spec: str, revision: str | None = None) -> str | None:
    """The folder of ``spec``: itself when it is one, else the Hub cache's snapshot of that model id (without any
    network access); ``None`` when it is not on this machine yet."""
    if os.path.isdir(spec):
        return spec
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=spec, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, not a repo id, offline: nothing to size
        return None


def needs_sequential(folder: str | os.PathLike, dtype: torch.dtype | None, device: str | None,
                     revision: str | None = None) -> tuple[bool, str]:
    """Whether a whole-model load of ``folder`` (a local folder, or a Hub id already in the cache) would not fit in
    ``FIT_FRACTION`` of the free memory of ``device``; returns (decision, the sentence that says why)."""
    folder = local_snapshot(str(folder), revision)
    if folder is None:
        return False, ""
    size = checkpoint_bytes(folder, dtype)
    if size is None:
        return False, ""
    free = free_memory(device)
    where = "GPU" if device and str(device).startswith("cuda") else "RAM"
    if size > FIT_FRACTION * free:
        return True, (f"the weights need {size / 2**30:.1f} GiB and {free / 2**30:.1f} GiB of {where} are free: "
                      "running layer by layer (--sequential; --no-sequential to load it whole anyway)")
    return False, ""


def limit_heap_growth() -> None:
    """Let freed layer weights go back to the OS at once.

    glibc raises its mmap threshold every time a large block is freed, so after the first layer every later one is
    carved from the heap, which never shrinks: reading layers one by one would grow the process by about a model's
    size of fragmented heap.  A fixed threshold (which also turns the dynamic one off) keeps large tensors in their own
    mappings.  A no-op outside glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        pass


def offloaded_modules(model: nn.Module) -> list[nn.Module]:
    """Sub-modules whose weights accelerate keeps off the compute device (loaded at each forward)."""
    out = []
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is None:
            continue
        hooks = getattr(hook, "hooks", None) or [hook]  # a SequentialHook holds several
        if any(getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None for h in hooks):
            out.append(module)
    return out


def is_offloaded(model: nn.Module) -> bool:
    return bool(offloaded_modules(model))


def onload(module: nn.Module) -> int:
    """Load the offloaded weights under ``module`` onto their execution device for good (and remove the hooks
    that would drop them again), so they can be read, copied and changed; returns how many sub-modules were onloaded."""
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import set_module_tensor_to_device

    done = 0
    for sub in offloaded_modules(module):
        hooks = getattr(sub._hf_hook, "hooks", None) or [sub._hf_hook]
        for hook in hooks:
            if not (getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None):
                continue
            names = [n for n, _ in sub.named_parameters(recurse=False)] + \
                    [n for n, b in sub.named_buffers(recurse=False) if b is not None and b.device.type == "meta"]
            for name in names:
                set_module_tensor_to_device(sub, name, hook.execution_device, value=hook.weights_map[name])
        remove_hook_from_module(sub)
        done += 1
    return done


def save_model(model: nn.Module, folder: str | os.PathLike, **kwargs: Any) -> None:
    """``model.save_pretrained(folder)``; an offloaded model (``--sequential``) is written shard by shard, each shard's
    offloaded weights read back from their files, so saving needs about one shard of memory, not the model."""
    if not is_offloaded(model):
        model.save_pretrained(folder, **kwargs)
        return
    import warnings

    had = "hf_device_map" in vars(model)
    old = getattr(model, "hf_device_map", None)
    if not old or not ({"cpu", "disk"} & set(map(str, old.values()))):
        model.hf_device_map = {"": "disk"}  # how transformers knows to read meta weights back (a wrapper has no map)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            model.save_pretrained(folder, **{"max_shard_size": OFFLOADED_SHARD_SIZE, **kwargs})
    finally:
        if had:
            model.hf_device_map = old
        elif "hf_device_map" in vars(model):
            del model.hf_device_map


@contextlib.contextmanager
def onloaded(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every offloaded weight under ``module`` is in memory (read-only use, e.g. a weight norm);
    they are dropped again on exit.  Nothing happens for a module that is not offloaded."""
    from accelerate.utils import align_module_device

    with contextlib.ExitStack() as stack:
        for sub in offloaded_modules(module):
            stack.enter_context(align_module_device(sub))
        yield module


def refuse_offloaded(model: nn.Module, what: str, instead: str) -> None:
    """A pass that needs every weight in memory at once (gradients of all layers) refuses an offloaded model."""
    from .errors import StreamlineError

    if is_offloaded(model):
        raise StreamlineError(f"{what} needs every layer's weights in memory at once, which a model loaded layer by "
                              f"layer (sequential) does not hold; {instead}")
