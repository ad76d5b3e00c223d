"""``hf-streamline similarity``: layer x layer similarity of decoder-layer outputs (CKA / cosine) as JSON + heat map."""

from __future__ import annotations

import argparse

from .common import (add_calibration_args, add_model_args, add_quantized_load_args,
                     calibration_from_args, check_calibration_args, load_from_args,
                     model_name, preflight_model)

HELP = "layer x layer similarity map (linear/RBF CKA with unbiased HSIC, or cosine)"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..options import SIMILARITY_MAP_KINDS as KINDS

    p = sub.add_parser(name, help=HELP)
    add_model_args(p)
    add_quantized_load_args(p)
    add_calibration_args(p, required=True)
    p.add_argument("--kind", default="cka_linear", choices=KINDS, help="similarity (default cka_linear)")
    p.add_argument("--max-gram-tokens", type=int, default=512,
                   help="CKA: tokens per HSIC minibatch (Gram matrices are this size squared; default 512)")
    p.add_argument("--sigma", type=float, default=1.0, help="cka_rbf: bandwidth as a multiple of the median distance")
    p.add_argument("--skip-first-tokens", type=int, default=0,
                   help="leave out each sequence's first K tokens (attention sinks with huge activations dominate "
                        "linear CKA; default 0)")
    p.add_argument("--output", required=True, help="write the matrix as JSON here")
    p.add_argument("--plot", default=None, help="also draw a heat map PNG here")
    p.set_defaults(func=run)


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
