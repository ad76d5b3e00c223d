"""``hf-streamline export``: a pruned checkpoint -> ONNX (ONNX Runtime) or optimum-quanto int8 / int4, checked vs torch."""

from __future__ import annotations

import argparse

HELP = "export a pruned model to ONNX or quantize it with optimum-quanto"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..plugins import EXPORTERS

    formats = "; ".join(f"{n}: {cls.description}" for n, cls in sorted(EXPORTERS.items()))
    p = sub.add_parser(name, help=HELP,
                       description=f"Formats — {formats}.")
    p.add_argument("model_dir", metavar="DIR", help="the model folder (e.g. written by `hf-streamline prune`)")
    p.add_argument("--format", required=True, choices=sorted(EXPORTERS), help="export format")
    p.add_argument("--output", required=True, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--check-seq-len", type=int, default=32, help="tokens per row of the fixed check input (default 32)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="fail when max |Δ logits| vs torch exceeds this x max(1, max |logit|) "
                        "(default: onnx 1e-4; quanto: report only)")
    p.add_argument("--no-verify", action="store_true", help="skip loading the export back and comparing with torch")
    p.add_argument("--opset", type=int, default=None, help="onnx: opset version (default: onnxscript's latest)")
    p.add_argument("--no-optimize", action="store_true", help="onnx: skip the onnxscript graph optimizer")
    p.add_argument("--quantize-lm-head", action="store_true",
                   help="quanto: also quantize the output projection (unties tied embeddings: larger on disk)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom modeling code from the model folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import REPORT_FILENAME, ExportConfig, export_model

    config = ExportConfig(check_seq_len=args.check_seq_len, tolerance=args.tolerance, verify=not args.no_verify,
                          opset=args.opset, optimize=not args.no_optimize, quantize_lm_head=args.quantize_lm_head,
                          trust_remote_code=args.trust_remote_code)
    report = export_model(args.model_dir, args.output, args.format, config, overwrite=args.overwrite)
    mb = report["weights_bytes"] / 2**20
    ratio = f" ({report['size_ratio']:.2f}x the source)" if report["size_ratio"] else ""
    print(f"exported {args.model_dir} as {args.format} with {report['backend']} to {args.output}: "
          f"{mb:.1f} MiB of weights{ratio}")
    check = report["check"]
    if check:
        print(f"vs torch on the check input: max |Δ logits| {check['max_abs_diff']:.3g} "
              f"(logit std {check['logit_std']:.3g}), argmax agreement {check['argmax_agreement']:.1%}")
    print(f"report: {args.output}/{REPORT_FILENAME}")
    return 0
