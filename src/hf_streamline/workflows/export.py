"""The ``export`` workflow (``hf-streamline export``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.export.run(arguments)``). A pruned checkpoint -> ONNX (ONNX Runtime) or optimum-quanto int8 / int4, checked vs torch."""

from __future__ import annotations

from typing import Any

from .common import Say, note


def run(args: Any, say: Say = note) -> int:
    from ..export import REPORT_FILENAME, ExportConfig, export_model

    config = ExportConfig(check_seq_len=args.check_seq_len, tolerance=args.tolerance, verify=not args.no_verify,
                          opset=args.opset, optimize=not args.no_optimize, quantize_lm_head=args.quantize_lm_head,
                          trust_remote_code=args.trust_remote_code)
    report = export_model(args.model_dir, args.output, args.format, config, overwrite=args.overwrite)
    mb = report["weights_bytes"] / 2**20
    ratio = f" ({report['size_ratio']:.2f}x the source)" if report["size_ratio"] else ""
    say(f"exported {args.model_dir} as {args.format} with {report['backend']} to {args.output}: "
          f"{mb:.1f} MiB of weights{ratio}")
    check = report["check"]
    if check:
        say(f"vs torch on the check input: max |Δ logits| {check['max_abs_diff']:.3g} "
              f"(logit std {check['logit_std']:.3g}), argmax agreement {check['argmax_agreement']:.1%}")
    say(f"report: {args.output}/{REPORT_FILENAME}")
    return 0
