"""``hf-streamline similarity``: layer x layer similarity of decoder-layer outputs (CKA / cosine) as JSON + heat map."""

from __future__ import annotations

import argparse

from .common import calibration_from_args, check_calibration_args, load_from_args, model_name, preflight_model

HELP = "layer x layer similarity map (linear/RBF CKA with unbiased HSIC, or cosine)"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.similarity import SimilarityArguments

    add_arguments(sub.add_parser(name, help=HELP), SimilarityArguments).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import StreamlineError
    from ..merging import layer_similarity
    from ..utils import versions

    if args.max_gram_tokens < 4:
        raise StreamlineError(f"--max-gram-tokens {args.max_gram_tokens} must be at least 4")
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
    print(f"{args.kind} similarity of {sim.num_layers} layers written to {args.output}")
    mat = sim.tensor()
    off = [(float(mat[i, i + 1]), i) for i in range(sim.num_layers - 1)]
    print("adjacent layers: " + ", ".join(f"{i}-{i + 1}: {v:.3f}" for v, i in off))
    if args.plot:
        sim.plot(args.plot, title=f"{name}: {args.kind} of layer outputs")
        print(f"heat map written to {args.plot}")
    return 0
