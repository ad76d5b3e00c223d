"""``qlora``: LoRA adapters trained on a 4-bit (bitsandbytes NF4) copy of the pruned model.

The frozen base is loaded in 4 bits through ``BitsAndBytesConfig`` (a model held in memory is first written to a
temporary folder), the adapters train in the model's dtype, and the result is the usual QLoRA deliverable: the adapter
for the *full-precision* pruned model (``AutoPeftModelForCausalLM`` loads that base), or that base with the adapter
merged (``--merge``).  Merging into the 4-bit weights would re-quantize them, so it is not done.

bitsandbytes >= 0.46 quantizes to 4 bits on CPU as well as on CUDA (measured here: bitsandbytes 0.50.2, CPU).  Where
it is missing or cannot quantize on the model's device, :meth:`QLoraHealing.check` raises a clear error before any
work.
"""

from __future__ import annotations

import shutil
from typing import Any

import torch
from torch import nn

from ..errors import StreamlineError
from ..utils import model_device
from .base import Prepared, model_dtype, register_healing_method
from .lora import AdapterBundle, LoraHealing, check_lora_options, merge_lora, resolve_lora_targets, wrap_with_lora

QUANT_TYPES = ("nf4", "fp4")


def bitsandbytes_problem(device: torch.device | str = "cpu") -> str | None:
    """``None`` when bitsandbytes can quantize to 4 bits on ``device``; otherwise why not (one sentence)."""
    try:
        import bitsandbytes as bnb  # noqa: F401
        import bitsandbytes.functional as F
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken native library
        return (f"bitsandbytes is not usable here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "install it with `pip install bitsandbytes` (>= 0.46 also runs on CPU)")
    try:
        x = torch.randn(64, 64, device=device)
        q, state = F.quantize_4bit(x, quant_type="nf4")
        back = F.dequantize_4bit(q, state, quant_type="nf4")
        if not torch.isfinite(back).all() or float((back - x).abs().mean()) > 0.2:
            return f"bitsandbytes {bnb.__version__} gives wrong 4-bit results on {device}"
    except Exception as exc:  # noqa: BLE001
        return (f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot quantize to 4 bits on {device} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); use method 'lora', or a "
                "device/bitsandbytes build with 4-bit support")
    return None


def load_4bit(folder: str, config: Any, dtype: torch.dtype, device: torch.device) -> nn.Module:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .. import modeling  # noqa: F401 - registers StreamlineForCausalLM

    bnb_cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.qlora_quant_type,
                                 bnb_4bit_use_double_quant=bool(config.qlora_double_quant),
                                 bnb_4bit_compute_dtype=dtype)
    kwargs: dict[str, Any] = {"quantization_config": bnb_cfg, "dtype": dtype}
    if device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    from ..loading import keep_4bit_cpu_kernels_safe

    return keep_4bit_cpu_kernels_safe(AutoModelForCausalLM.from_pretrained(folder, **kwargs))


@register_healing_method
class QLoraHealing(LoraHealing):
    name = "qlora"
    citation = None
    description = "LoRA adapters trained on a 4-bit (bitsandbytes NF4) copy of the frozen pruned model"

    def check(self, model: nn.Module) -> None:
        check_lora_options(self.config)
        if self.config.qlora_quant_type not in QUANT_TYPES:
            raise StreamlineError(f"unknown; use one of {list(QUANT_TYPES)}", argument="config.qlora_quant_type",
                                  value=self.config.qlora_quant_type)
        problem = bitsandbytes_problem(model_device(model))
        if problem:
            raise StreamlineError(f"qlora needs a 4-bit base: {problem}")
        resolve_lora_targets(model, self.config.lora_targets)

    def prepare(self, model: nn.Module, model_path: str | None = None) -> Prepared:
        from peft import prepare_model_for_kbit_training

        self.check(model)
        tmp = None
        folder = model_path
        if folder is None:  # a model held in memory: write it once so bitsandbytes can load it quantized
            from ..utils import make_work_dir

            tmp = make_work_dir("qlora")
            model.save_pretrained(tmp)
            folder = tmp
        dtype = model_dtype(model)
        try:
            qmodel = load_4bit(folder, self.config, dtype, model_device(model))
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        qmodel = prepare_model_for_kbit_training(qmodel, use_gradient_checkpointing=False)
        peft_model, info = wrap_with_lora(qmodel, self.config)
        info.update({"quantization": f"bitsandbytes 4-bit {self.config.qlora_quant_type}"
                                     + (" + double quant" if self.config.qlora_double_quant else ""),
                     "compute_dtype": str(dtype).replace("torch.", ""),
                     "evaluated_on": "full-precision pruned model + adapter (merged when --merge)"})
        return Prepared(peft_model, None, info, state={"full_precision": model})

    def finish(self, prepared: Prepared, merge: bool = True) -> tuple[nn.Module, Any]:
        adapter = AdapterBundle.from_peft(prepared.model)
        full = prepared.state.pop("full_precision")
        prepared.model = None  # drop the 4-bit copy
        for p in full.parameters():
            p.requires_grad_(False)
        peft_full = adapter.apply_to(full)
        return (merge_lora(peft_full) if merge else peft_full), adapter
