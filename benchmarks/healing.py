"""Healing benchmark: SmolLM2-135M with 8 of 30 layers removed (the last 8 = the Reassessing paper's recipe, and the 8
lowest block-influence layers), healed with partial k=0/1/3, LoRA, QLoRA and distillation under one token budget.

    .venv/bin/python benchmarks/healing.py                      # the numbers in benchmarks/healing_results.md
    .venv/bin/python benchmarks/healing.py --budget-tokens 2048 --limit 5 --ppl-tokens 512   # quicker

Writes ``benchmarks/healing_results.md`` (+ ``healing_results.json`` and one PNG chart per pruned model) unless
``--no-write``.  Sized for a shared 2-core CPU: the whole run must stay under 25 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
TASKS = ["arc_easy", "arc_challenge", "boolq", "copa", "lambada_openai", "openbook_qa", "piqa", "winogrande"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-tokens", type=int, default=4096, help="training tokens per method (default 4096)")
    p.add_argument("--seq-len", type=int, default=128, help="training window (default 128)")
    p.add_argument("--batch-size", type=int, default=2, help="training batch (default 2)")
    p.add_argument("--methods", default="partial:0,partial:1,partial:3,lora,qlora,distill")
    p.add_argument("--partial-lr", type=float, default=3e-4, help="learning rate of partial / distill (default 3e-4)")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="learning rate of lora / qlora (default 1e-3)")
    p.add_argument("--data", default=str(SHARED / "train" / "wikipedia_30_articles.txt"))
    p.add_argument("--ppl-tokens", type=int, default=1024, help="fixed slice of WikiText-2 / PTB (default 1024 tokens)")
    p.add_argument("--limit", type=int, default=10, help="items per task (default 10)")
    p.add_argument("--variants", default="reverse_order,block_influence")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hf_streamline.calibration import build_calibration
    from hf_streamline.healing import HealingConfig, HealingDataConfig, load_healing_data
    from hf_streamline.healing.compare import CompareConfig, compare_healing, render_comparison, write_comparison
    from hf_streamline.loading import bundled_model_dir, load_model_and_tokenizer
    from hf_streamline.pruning import prune, save_pruned
    from hf_streamline.selection import Target
    from hf_streamline.utils import versions

    t_start = time.perf_counter()
    dense_dir = str(bundled_model_dir())
    work = Path(tempfile.mkdtemp(prefix="healing_bench_"))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    reports = {}
    try:
        _, tok = load_model_and_tokenizer(dense_dir)
        data = load_healing_data(tok, HealingDataConfig(source=args.data, seq_len=args.seq_len, eval_size=4,
                                                        max_examples=max(64, args.budget_tokens // args.seq_len + 8)))
        for i, variant in enumerate(v.strip() for v in args.variants.split(",")):
            model, tok = load_model_and_tokenizer(dense_dir)
            calib = None
            if variant != "reverse_order":
                calib = build_calibration(tok, args.data, n_samples=16, seq_len=args.seq_len)
            t0 = time.perf_counter()
            model, plan = prune(model, metric=variant, target=Target(layers=8), calibration=calib, progress=False)
            print(f"[{variant}] removed {plan.removed_layers} ({time.perf_counter() - t0:.1f} s)", flush=True)
            pruned_dir = work / variant
            save_pruned(model, tok, plan, pruned_dir)
            del model
            cfg = CompareConfig(methods=methods, budget_tokens=args.budget_tokens,
                                ppl=[f"wikitext2={SHARED / 'text' / 'wikitext2_test.raw'}",
                                     f"ptb={SHARED / 'text' / 'ptb.test.txt'}"],
                                ppl_tokens=args.ppl_tokens, ppl_seq_len=256, tasks=TASKS, limit=args.limit,
                                task_dir=str(SHARED / "eval"), include_teacher=i == 0, eval_batch_size=8)
            cfg.learning_rates = {"partial": args.partial_lr, "distill": args.partial_lr, "lora": args.lora_lr,
                                  "qlora": args.lora_lr}
            healing = HealingConfig(batch_size=args.batch_size, seed=0, progress=False)
            report = compare_healing(str(pruned_dir), data, cfg, healing, teacher=dense_dir)
            report["model"] = f"SmolLM2-135M-Instruct, {variant} layers {plan.removed_layers} removed"
            report["teacher"] = "SmolLM2-135M-Instruct (dense)"
            report["removed_layers"] = plan.removed_layers
            report["variant"] = variant
            reports[variant] = report
            out = work / f"cmp_{variant}"
            write_comparison(report, out)
            print(render_comparison(report), flush=True)
            if not args.no_write:
                shutil.copy(out / "comparison.png", ROOT / "benchmarks" / f"healing_{variant}.png")
        total = time.perf_counter() - t_start
        print(f"total {total / 60:.1f} min", flush=True)
        if not args.no_write:
            write_results(reports, args, total, versions())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def write_results(reports: dict, args, total_s: float, vers: dict) -> None:
    from hf_streamline.healing.compare import render_comparison

    lines = ["# Healing benchmark: partial-layer training vs LoRA / QLoRA vs distillation", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other "
             f"jobs, torch threads {args.threads}; " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".", "",
             "Command: `.venv/bin/python benchmarks/healing.py "
             + " ".join(a for a in sys.argv[1:]) + "`", "",
             f"Model: SmolLM2-135M-Instruct (bundled, fp32, 30 layers, tied embeddings), 8 layers removed. "
             f"Training data: `{Path(args.data).name}` as windows of {args.seq_len} tokens, batch {args.batch_size}, "
             f"**{args.budget_tokens} training tokens per method** ({args.budget_tokens // (args.seq_len * args.batch_size)} "
             f"steps), AdamW, cosine schedule, learning rate {args.partial_lr} for partial/distill and {args.lora_lr} "
             f"for LoRA/QLoRA (r=16, alpha=32, every linear layer of the decoder layers); distill = KL(teacher || "
             f"student) at T=1 on lm_head + norm + last 3 layers; tied embeddings: lm_head untied (default policy). "
             f"Evaluation: perplexity on the first {args.ppl_tokens} tokens of WikiText-2 test and PTB test "
             f"(windows of 256); zero-shot accuracy on {args.limit} seeded items of each of the 8 tasks in "
             f"`shared/data/eval` (the same items for every row). Whole run: {total_s / 60:.1f} min.", ""]
    for variant, report in reports.items():
        lines += [f"## {variant}: removed layers {report['removed_layers']}", "", render_comparison(report),
                  f"![{variant}](healing_{variant}.png)", ""]
    (ROOT / "benchmarks" / "healing_results.json").write_text(json.dumps(reports, indent=2, default=str) + "\n")
    (ROOT / "benchmarks" / "healing_results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
