"""Benchmark: one-pass scoring cost vs a plain forward, and peak memory vs number of calibration samples.

Measures, on SmolLM2-135M with N x 256 calibration tokens:
1. time of block_influence + angular (all n) + block_cosine (all n) computed together in one hooked pass, as a ratio
   to one plain ``torch.no_grad()`` forward of the transformer body (no lm_head) over the same tokens -- runs are
   interleaved and the median ratio of several repeats is reported (the machine is shared and noisy);
2. for comparison, the same statistics computed from ``output_hidden_states=True`` (what reference scripts do);
3. peak RSS of a scoring run with 32 vs 128 samples (separate processes; the statistics are streamed, so the peak
   should not grow beyond the batch).

Usage: python benchmarks/core_scoring.py [--samples 64] [--repeats 5] [--output benchmarks/core_scoring_results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
CALIB = SHARED / "train" / "wikipedia_30_articles.txt"


def _load(samples: int, seq_len: int):
    from hf_streamline import build_calibration, load_model_and_tokenizer
    from hf_streamline.calibration import CalibrationConfig

    model, tok = load_model_and_tokenizer(None, dtype="float32")
    calib = build_calibration(tok, str(CALIB), CalibrationConfig(n_samples=samples, seq_len=seq_len, seed=0))
    return model, calib


@torch.no_grad()
def plain_forward(model, calib, bs):
    from hf_streamline.capture import base_forward_module

    body = base_forward_module(model)
    for b in calib.batches(bs):
        body(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)


def hooked_scores(model, calib, bs):
    from hf_streamline import compute_scores

    L = model.config.num_hidden_layers
    return compute_scores(model, ["block_influence", "angular", "block_cosine"], calib, batch_size=bs,
                          block_sizes=list(range(1, L)), progress=False)


@torch.no_grad()
def hidden_states_scores(model, calib, bs):
    """What reference scripts do: keep all L+1 hidden states (the last one post-norm) and compare them."""
    from hf_streamline.capture import base_forward_module

    body = base_forward_module(model)
    for b in calib.batches(bs):
        hs = body(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True,
                  use_cache=False).hidden_states
        normed = [h.float() / h.float().norm(dim=-1, keepdim=True) for h in hs]
        for i in range(len(normed)):
            for j in range(i + 1, len(normed)):
                (normed[i] * normed[j]).sum(-1).mean()


def child_rss(samples: int, seq_len: int, bs: int) -> dict:
    """RSS sampled every 5 ms during scoring (the load's own peak would otherwise hide the scoring peak)."""
    import gc
    import threading

    import psutil

    model, calib = _load(samples, seq_len)
    gc.collect()
    proc = psutil.Process()
    before = proc.memory_info().rss / 2**20
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
            stop.wait(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    hooked_scores(model, calib, bs)
    stop.set()
    t.join()
    return {"samples": samples, "rss_before_mb": before, "peak_rss_mb": peak[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "core_scoring_results.md"))
    ap.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rss is not None:
        print(json.dumps(child_rss(args.child_rss, args.seq_len, args.batch_size)))
        return
    torch.manual_seed(0)
    model, calib = _load(args.samples, args.seq_len)
    plain_forward(model, calib, args.batch_size)  # warm-up
    hooked_scores(model, calib, args.batch_size)
    rows = []
    for _ in range(args.repeats):
        t0 = time.perf_counter(); plain_forward(model, calib, args.batch_size); t1 = time.perf_counter()
        hooked_scores(model, calib, args.batch_size); t2 = time.perf_counter()
        hidden_states_scores(model, calib, args.batch_size); t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2))
    plain = statistics.median(r[0] for r in rows)
    ratio = statistics.median(r[1] / r[0] for r in rows)
    ratio_hs = statistics.median(r[2] / r[0] for r in rows)
    rss = []
    for n in (32, 128):
        out = subprocess.run([sys.executable, __file__, "--child-rss", str(n), "--seq-len", str(args.seq_len),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import transformers

    cmd = "python benchmarks/core_scoring.py " + " ".join(sys.argv[1:])
    lines = [
        "## Core scoring: one hooked pass vs a plain forward (issue 2)",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}",
        f"- Model: SmolLM2-135M-Instruct (bundled GGUF, dequantized to fp32), {model.config.num_hidden_layers} layers",
        f"- Calibration: {args.samples} x {args.seq_len} tokens of `train/wikipedia_30_articles.txt`, batch {args.batch_size}",
        f"- Command: `{cmd.strip()}`; {args.repeats} interleaved repeats, medians",
        "",
        "| what | time (s, median) | ratio to plain forward |",
        "|---|---|---|",
        f"| plain `torch.no_grad()` forward of the body (no lm_head) | {plain:.2f} | 1.00 |",
        f"| block_influence + angular (all n) + block_cosine (all n), one hooked pass | {plain * ratio:.2f} | **{ratio:.3f}** |",
        f"| same statistics from `output_hidden_states=True` (reference-script style) | {plain * ratio_hs:.2f} | {ratio_hs:.3f} |",
        "",
        "RSS during a scoring run (separate processes, sampled every 5 ms; growth = what scoring adds on top of the loaded model):",
        "",
        "| samples | RSS before scoring (MB) | peak RSS during scoring (MB) | growth (MB) |",
        "|---|---|---|---|",
    ]
    for r in rss:
        lines.append(f"| {r['samples']} | {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f} |")
    lines.append("")
    text = "\n".join(lines)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
