"""The ``mergekit`` workflow (``hf-streamline mergekit``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.mergekit.run(arguments)``). Write a plain removal plan as a mergekit passthrough YAML."""

from __future__ import annotations

from typing import Any

from .common import Say, note


def run(args: Any, say: Say = note) -> int:
    from ..plan import StreamlinePlan
    from ..recipes import mergekit_passthrough_yaml

    text = mergekit_passthrough_yaml(StreamlinePlan.load(args.plan), model=args.model, dtype=args.dtype)
    if args.output:
        from ..utils import write_text_atomic

        write_text_atomic(args.output, text)
        say(f"mergekit recipe written to {args.output}")
    else:
        say(text.rstrip("\n"))  # the YAML on stdout (print ends the line)
    return 0
