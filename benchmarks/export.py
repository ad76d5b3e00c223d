"""Benchmark: depth pruning stacked with quantization, and ONNX Runtime vs torch, on SmolLM2-135M (CPU).

1. dense (30 layers) vs dense + int8 vs pruned (8 layers removed by block_influence on 32x256 tokens of
   wikipedia_30_articles.txt) vs pruned + optimum-quanto int8 / int4 weights: size of the weights on disk, prefill latency (1 x PREFILL tokens),
   decode speed (greedy generate with KV cache; (t(1+N new) - t(1 new)) / N), and WikiText-2 perplexity on the first
   PPL_TOKENS tokens of wikitext2_test.raw (non-overlapping 256-token windows);
2. ONNX (transformers.exporters.OnnxExporter, run by ONNX Runtime) vs torch prefill latency, dense and pruned;
3. ONNX with a KV cache (`onnx-kv`: prefill + decode graphs) vs torch greedy decode speed, dense and pruned, and
   whether ONNX Runtime generates the same tokens as torch.

Timings are interleaved (every round runs every model once, in turn) and the medians over rounds are reported, with
ratios taken within this one run: the machine is shared and noisy, absolute times are not comparable across runs.

Usage: python benchmarks/export.py [--rounds 7] [--ppl-tokens 16384] [--output benchmarks/export_results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
CALIB = SHARED / "train" / "wikipedia_30_articles.txt"
WIKITEXT = SHARED / "text" / "wikitext2_test.raw"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    ap.add_argument("--prefill", type=int, default=256, help="prefill tokens (default 256)")
    ap.add_argument("--decode", type=int, default=16, help="decoded tokens per decode timing (default 16)")
    ap.add_argument("--ppl-tokens", type=int, default=16384, help="WikiText-2 tokens for perplexity (default 16384)")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--skip-onnx-kv", action="store_true", help="skip the KV-cache ONNX export and its decode timing")
    ap.add_argument("--workdir", default=None,
                    help="keep the pruned model and the exports here and reuse those already there (default: a "
                         "temporary folder, deleted at the end)")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "export_results.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]

    from hf_streamline import build_calibration, evaluate_perplexity, load_model_and_tokenizer, prune
    from hf_streamline.calibration import CalibrationConfig
    from hf_streamline.export import (export_model, folder_size, load_onnx_kv, load_quanto, onnx_generate, ort_logits,
                                      ort_session)
    from hf_streamline.loading import bundled_model_dir
    from hf_streamline.plan import PLAN_FILENAME, StreamlinePlan
    from hf_streamline.pruning import save_pruned
    from hf_streamline.selection import Target
    from hf_streamline.utils import versions

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hfs-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    def export_once(src, name, fmt):
        if (work / name / "export_report.json").exists():
            return json.loads((work / name / "export_report.json").read_text())
        return export_model(src, work / name, fmt)

    dense_dir = bundled_model_dir()
    log(f"dense model: {dense_dir}; work dir {work}")
    dense, tok = load_model_and_tokenizer(str(dense_dir), dtype="float32")
    pruned_dir = work / "pruned"
    if (pruned_dir / PLAN_FILENAME).exists():
        pruned, _ = load_model_and_tokenizer(str(pruned_dir), dtype="float32")
        plan = StreamlinePlan.load(pruned_dir / PLAN_FILENAME)
    else:
        pruned, _ = load_model_and_tokenizer(str(dense_dir), dtype="float32")
        calib = build_calibration(tok, str(CALIB), CalibrationConfig(n_samples=32, seq_len=256, seed=0))
        pruned, plan = prune(pruned, metric="block_influence", target=Target(layers=8), calibration=calib,
                             base_model="HuggingFaceTB/SmolLM2-135M-Instruct", progress=False)
        save_pruned(pruned, tok, plan, pruned_dir)
    log(f"removed layers {plan.removed_layers}")

    reports = {}
    quantized = {"dense+int8": (dense_dir, "quanto-int8"), "pruned+int8": (pruned_dir, "quanto-int8"),
                 "pruned+int4": (pruned_dir, "quanto-int4")}
    for name, (src, fmt) in quantized.items():
        reports[name] = export_once(src, name, fmt)
        log(f"{name}: {reports[name]['weights_bytes'] / 2**20:.1f} MiB, check {reports[name]['check']['max_abs_diff']:.3g}")
    models = {"dense": dense, "dense+int8": load_quanto(work / "dense+int8"), "pruned": pruned,
              "pruned+int8": load_quanto(work / "pruned+int8"), "pruned+int4": load_quanto(work / "pruned+int4")}
    sizes = {"dense": folder_size(dense_dir, ("*.safetensors",)), "pruned": folder_size(pruned_dir, ("*.safetensors",))}
    sizes.update({name: reports[name]["weights_bytes"] for name in quantized})

    onnx_sessions, kv_models = {}, {}  # logits graphs (ORT sessions), KV-cache graphs (ExportedModel)
    for fmt, load, loaded, skip in (("onnx", ort_session, onnx_sessions, args.skip_onnx),
                                    ("onnx-kv", load_onnx_kv, kv_models, args.skip_onnx_kv)):
        for name, src in (() if skip else (("dense", dense_dir), ("pruned", pruned_dir))):
            key = f"{fmt}-{name}"
            r = reports[key] = export_once(src, key, fmt)
            loaded[name] = load(work / key, threads=args.threads)
            log(f"{fmt} {name}: {r['weights_bytes'] / 2**20:.1f} MiB, export {r['export_seconds']:.0f} s, "
                f"max |Δ| {r['check']['max_abs_diff']:.3g}")

    # fixed prompt: the first tokens of the WikiText-2 test text
    text_ids = tok(WIKITEXT.read_text(encoding="utf-8"), return_tensors="pt", add_special_tokens=False).input_ids
    prompt = text_ids[:, : args.prefill]
    mask = torch.ones_like(prompt)
    short = prompt[:, :64]

    @torch.no_grad()
    def prefill(m):
        m(input_ids=prompt, attention_mask=mask, use_cache=False)

    @torch.no_grad()
    def gen(m, n):
        m.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                   pad_token_id=tok.pad_token_id)

    # warm-up, and ONNX Runtime vs torch logits on the real prompt
    for m in models.values():
        prefill(m), gen(m, 2)
    same_tokens = {}
    for name, kv in kv_models.items():
        onnx_generate(kv, short, 2)
        with torch.no_grad():
            ref = models[name].generate(short, attention_mask=torch.ones_like(short), max_new_tokens=args.decode,
                                        min_new_tokens=args.decode, do_sample=False, pad_token_id=tok.pad_token_id)
        same_tokens[name] = bool(torch.equal(onnx_generate(kv, short, args.decode), ref))
    prompt_diff = {}
    for name, s in onnx_sessions.items():
        with torch.no_grad():
            ref = models[name](input_ids=prompt, attention_mask=mask).logits
        prompt_diff[name] = ((ort_logits(s, prompt, mask) - ref).abs().max().item(), ref.abs().max().item())

    times: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for name, m in models.items():
            times.setdefault(f"prefill {name}", []).append(timed(lambda: prefill(m)))
            t1 = timed(lambda: gen(m, 1))
            tn = timed(lambda: gen(m, 1 + args.decode))
            times.setdefault(f"decode {name}", []).append((tn - t1) / args.decode)
        for name, s in onnx_sessions.items():
            times.setdefault(f"onnx prefill {name}", []).append(timed(lambda: ort_logits(s, prompt, mask)))
        for name, kv in kv_models.items():
            t1 = timed(lambda: onnx_generate(kv, short, 1))
            tn = timed(lambda: onnx_generate(kv, short, 1 + args.decode))
            times.setdefault(f"onnx-kv decode {name}", []).append((tn - t1) / args.decode)
        log(f"round {r + 1}/{args.rounds} done")
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in times.items()}
    load_end = os.getloadavg()[0]

    ppl = {}
    for name, m in models.items():
        ppl[name] = evaluate_perplexity(m, tok, text_ids[0], seq_len=256, max_tokens=args.ppl_tokens, batch_size=4,
                                        progress=False)
        log(f"ppl {name}: {ppl[name]:.2f}")

    v = versions()
    import onnxruntime
    import optimum.quanto

    lines = [
        "# Export benchmark: pruning + quantization, ONNX Runtime vs torch (SmolLM2-135M-Instruct, CPU)", "",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical cores, {args.threads} threads for torch and ONNX Runtime; "
        f"1-min load average {load_start:.2f} at the start, {load_end:.2f} after the timing rounds; largest "
        f"(max - min) / median over the rounds of one timing: {max(spread.values()):.0%}", f"- versions: torch {v['torch']}, transformers "
        f"{v['transformers']}, optimum-quanto {getattr(optimum.quanto, '__version__', '?')}, onnxruntime "
        f"{onnxruntime.__version__}, hf_streamline {v['hf_streamline']}, python {v['python']}",
        f"- command: `python benchmarks/export.py --rounds {args.rounds} --prefill {args.prefill} --decode "
        f"{args.decode} --ppl-tokens {args.ppl_tokens} --threads {args.threads}{' --workdir DIR' if args.workdir else ''}` "
        f"({(time.perf_counter() - t_start) / 60:.1f} min this run; with --workdir, exports made by an earlier run "
        "are reused and their export times come from it)",
        f"- pruned: 8 of 30 layers removed by block_influence (32x256 calibration tokens of wikipedia_30_articles.txt): "
        f"{plan.removed_layers}; no healing",
        f"- perplexity: WikiText-2 test (wikitext2_test.raw), first {args.ppl_tokens} tokens, non-overlapping 256-token "
        "windows", f"- prefill: 1 x {args.prefill} tokens, no cache; decode: greedy `generate` from a 64-token prompt, "
        f"(t(1+{args.decode} new) - t(1 new)) / {args.decode}; medians of {args.rounds} interleaved rounds", "",
        "## Depth pruning + optimum-quanto weight quantization", "",
        "| model | weights on disk (MiB) | size vs dense | prefill (ms) | prefill speed-up | decode (ms/token) "
        "| decode speed-up | WikiText-2 PPL |", "|---|---|---|---|---|---|---|---|"]
    for name in models:
        p, d = med[f"prefill {name}"], med[f"decode {name}"]
        lines.append(f"| {name} | {sizes[name] / 2**20:.1f} | {sizes[name] / sizes['dense']:.2f}x | {p * 1e3:.0f} | "
                     f"{med['prefill dense'] / p:.2f}x | {d * 1e3:.1f} | {med['decode dense'] / d:.2f}x | {ppl[name]:.2f} |")
    lines += ["", "Check of each quantized export vs its unquantized source (fixed 2x32 random-token input):", ""]
    for name in quantized:
        c = reports[name]["check"]
        lines.append(f"- {name}: max |Δ logits| {c['max_abs_diff']:.3g} (max |logit| {c['logit_max_abs']:.3g}, "
                     f"std {c['logit_std']:.3g}), mean |Δ| {c['mean_abs_diff']:.3g}, argmax agreement "
                     f"{c['argmax_agreement']:.1%}")
    if onnx_sessions:
        lines += ["", "## ONNX Runtime vs torch prefill (fp32)", "",
                  "| model | ONNX files (MiB) | export (s) | max \\|Δ logits\\| vs torch: check / prompt (max \\|logit\\|) | "
                  "torch prefill (ms) | ORT prefill (ms) | ORT speed-up vs torch | vs dense ORT |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in onnx_sessions:
            r = reports[f"onnx-{name}"]
            tp, op = med[f"prefill {name}"], med[f"onnx prefill {name}"]
            lines.append(f"| {name} | {r['weights_bytes'] / 2**20:.1f} | {r['export_seconds']:.0f} | "
                         f"{r['check']['max_abs_diff']:.2g} / {prompt_diff[name][0]:.2g} ({prompt_diff[name][1]:.1f}) | "
                         f"{tp * 1e3:.0f} | {op * 1e3:.0f} | {tp / op:.2f}x | "
                         f"{med['onnx prefill dense'] / op:.2f}x |")
    if kv_models:
        lines += ["", "## ONNX Runtime with a KV cache (`--format onnx-kv`) vs torch decode (fp32, batch 1)", "",
                  "| model | ONNX files (MiB, two graphs) | export (s) | max \\|Δ logits\\| vs torch (prefill + decode steps) "
                  f"| same {args.decode} greedy tokens as torch | torch decode (ms/token) | ORT decode (ms/token) | "
                  "ORT speed-up vs torch | vs dense ORT |", "|---|---|---|---|---|---|---|---|---|"]
        for name in kv_models:
            r = reports[f"onnx-kv-{name}"]
            td, od = med[f"decode {name}"], med[f"onnx-kv decode {name}"]
            lines.append(f"| {name} | {r['weights_bytes'] / 2**20:.1f} | {r['export_seconds']:.0f} | "
                         f"{r['check']['max_abs_diff']:.2g} | {'yes' if same_tokens[name] else 'NO'} | {td * 1e3:.1f} | "
                         f"{od * 1e3:.1f} | {td / od:.2f}x | {med['onnx-kv decode dense'] / od:.2f}x |")
    lines += ["", "Raw medians (s): " + ", ".join(f"{k} {v:.4f}" for k, v in med.items()), ""]
    Path(args.output).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    import shutil

    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
