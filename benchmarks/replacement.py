"""Benchmark: LLM-Streamline replacement on SmolLM2-135M (30 layers), 8 layers saved (a block of 9 -> 1 module).

For none / mlp / decoder_layer: WikiText-2 (test) and PTB (test) perplexity on a fixed token budget, training time;
then peak RSS of the mlp training (activations cached in disk shards) with 1x, 2x and 4x the training text, each in a
fresh process (RAM must not grow with the text).

    .venv/bin/python benchmarks/replacement.py [--steps 150] [--eval-tokens 16384] [--windows 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TRAIN = SHARED / "train" / "wikipedia_30_articles.txt"
EVAL = {"wikitext2": SHARED / "text" / "wikitext2_test.raw", "ptb": SHARED / "text" / "ptb.test.txt"}


def run_one(kind: str, start: int | None, a: argparse.Namespace, windows: int, calib=None, model=None, tok=None,
            eval_ppl: bool = True) -> dict:
    import torch  # noqa: F401

    from hf_streamline import evaluate_perplexity
    from hf_streamline.replacement import streamline
    from hf_streamline.training import StreamlineTrainingArguments
    from hf_streamline.utils import peak_rss_mb

    steps = a.steps if a.steps > 0 else max(1, windows // a.batch_size)
    args = StreamlineTrainingArguments(output_dir="/tmp/hf_streamline_bench_train", max_steps=steps,
                                       per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
                                       lr_scheduler_type="cosine", warmup_steps=10, use_cpu=True, disable_tqdm=True,
                                       logging_steps=10_000, seed=0)
    t0 = time.perf_counter()
    new, plan = streamline(copy.deepcopy(model), tok, block_size=9, block_start=start, replacement=kind,
                           calibration=calib, train_data=str(TRAIN), train_seq_len=a.seq_len, max_train_windows=windows,
                           training_args=args, activations=a.activations, progress=False)
    seconds = time.perf_counter() - t0
    out = {"kind": kind, "block": plan.removed_layers, "layers_after": plan.num_layers_after, "train_seconds": seconds,
           "train_windows": windows, "train_tokens": windows * a.seq_len, "steps": steps if kind != "none" else 0,
           "peak_rss_mb": peak_rss_mb(), "params": sum(p.numel() for p in new.parameters())}
    if eval_ppl:
        for name, path in EVAL.items():
            out[f"ppl_{name}"] = evaluate_perplexity(new, tok, str(path), seq_len=256, max_tokens=a.eval_tokens,
                                                     progress=False)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--windows", type=int, default=64, help="training windows (x seq-len tokens) of the 1x run")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--activations", default="cache")
    p.add_argument("--block-start", type=int, default=None, help="default: chosen by block_cosine")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--out", default="benchmarks/replacement_results.json")
    a = p.parse_args()

    import torch

    torch.set_num_threads(2)
    from hf_streamline import build_calibration, evaluate_perplexity, load_model_and_tokenizer
    from hf_streamline.loading import bundled_model_dir
    from hf_streamline.replacement import choose_block

    model, tok = load_model_and_tokenizer(str(bundled_model_dir()), dtype="float32")
    if a.rss_child:  # one mlp training in a fresh process: peak RSS only
        kind, windows, start = a.rss_child.split(":")
        print(json.dumps(run_one(kind, int(start), a, int(windows), model=model, tok=tok, eval_ppl=False)))
        return
    results: dict = {"config": vars(a), "runs": []}
    calib = build_calibration(tok, str(TRAIN), n_samples=16, seq_len=256)
    start = a.block_start
    if start is None:
        start, _ = choose_block(model, 9, calib, progress=False)
    results["block_start"] = start
    dense = {f"ppl_{n}": evaluate_perplexity(model, tok, str(pth), seq_len=256, max_tokens=a.eval_tokens, progress=False)
             for n, pth in EVAL.items()}
    results["dense"] = dense
    print("dense", dense, flush=True)
    for kind in ("none", "mlp", "decoder_layer"):
        r = run_one(kind, start, a, a.windows, model=model, tok=tok)
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
    if not a.skip_rss:
        results["rss"] = []
        for mult in (1, 2, 4):
            cmd = [sys.executable, __file__, "--rss-child", f"mlp:{a.windows * mult}:{start}", "--steps", "0",
                   "--seq-len", str(a.seq_len), "--batch-size", str(a.batch_size), "--activations", a.activations]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["text_multiple"] = mult
            results["rss"].append(r)
            print("rss", json.dumps(r), flush=True)
    from hf_streamline.utils import versions

    results["versions"] = versions()
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
