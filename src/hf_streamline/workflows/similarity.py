"""The ``similarity`` workflow (``hf-streamline similarity``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.similarity.run(arguments)``). Layer x layer similarity of decoder-layer outputs (CKA / cosine) as JSON + heat map."""

from __future__ import annotations

import copy
from typing import Any

from .common import Say, note, calibration_from_args, check_calibration_args, load_from_args, model_name, preflight_model


def run(args: Any, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
    from ..errors import StreamlineError
    from ..merging import layer_similarity
    from ..utils import versions

    if args.max_gram_tokens < 4:
        raise StreamlineError("must be at least 4", argument="max_gram_tokens", value=args.max_gram_tokens)
    check_calibration_args(args)
    preflight_model(args)
    model, tok = load_from_args(args)
    calib = calibration_from_args(args, tok)
    sim = layer_similarity(model, calib, kind=args.kind, batch_size=args.batch_size,
                           max_gram_tokens=args.max_gram_tokens, sigma=args.sigma, seed=args.seed,
                           skip_first_tokens=args.skip_first_tokens)
    name = model_name(args)
    sim.details.update({"model": name, "calibration": calib.recipe(), "versions": versions()})
    sim.save(args.output)
    say(f"{args.kind} similarity of {sim.num_layers} layers written to {args.output}")
    mat = sim.tensor()
    off = [(float(mat[i, i + 1]), i) for i in range(sim.num_layers - 1)]
    say("adjacent layers: " + ", ".join(f"{i}-{i + 1}: {v:.3f}" for v, i in off))
    if args.plot:
        sim.plot(args.plot, title=f"{name}: {args.kind} of layer outputs")
        say(f"heat map written to {args.plot}")
    return 0
