"""Benchmark of the evaluation code on SmolLM2-135M-Instruct (the bundled model), CPU.

    .venv/bin/python benchmarks/evaluation.py --limit 100 --threads 1 --json /tmp/evaluation_bench.json

1. zero-shot accuracy of the dense model on every task in ../shared/data/eval (a seeded sample of --limit items per
   task, the full set when it is smaller), with items/s of our scorer;
2. WikiText-2 and PTB perplexity (first --ppl-tokens tokens of each) of the dense and a pruned model (8 layers removed:
   12-17, 25, 26, the lowest block influence in DESIGN.md);
3. prefill / decode speed, dense vs pruned, interleaved, median of 5;
4. shared-prefix reuse on / off (items/s) on one task;
5. our scorer vs lm-eval-harness (HFLM, local-file task) on the same --lm-eval-items items: items/s and the largest
   log-likelihood difference.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TASKS = ["arc_easy", "arc_challenge", "piqa", "openbook_qa", "boolq", "copa", "winogrande", "lambada_openai"]
REMOVE = [12, 13, 14, 15, 16, 17, 25, 26]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--lm-eval-items", type=int, default=40)
    ap.add_argument("--reuse-items", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default="evaluation_bench.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from hf_streamline import load_model_and_tokenizer, remove_layers
    from hf_streamline.evaluation import evaluate_task, measure_speed, parameter_counts
    from hf_streamline.loading import bundled_model_dir
    from hf_streamline.perplexity import evaluate_perplexity
    from hf_streamline.utils import versions

    t_start = time.perf_counter()
    eval_dir = str(SHARED / "eval")
    dense, tok = load_model_and_tokenizer(str(bundled_model_dir()), dtype="float32")
    pruned = copy.deepcopy(dense)
    remove_layers(pruned, REMOVE)
    out: dict = {"versions": versions(), "machine": f"{platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} cores (shared), torch threads {args.threads}", "limit": args.limit,
                 "params": {"dense": parameter_counts(dense), "pruned": parameter_counts(pruned)}, "tasks": {}}
    for task in TASKS:
        t0 = time.perf_counter()
        r = evaluate_task(dense, tok, task, limit=args.limit, seed=0, task_dir=eval_dir, batch_size=args.batch_size,
                          progress=False)
        dt = time.perf_counter() - t0
        out["tasks"][task] = {**r.summary(), "seconds": dt, "items_per_s": r.n / dt}
        print(f"{task}: acc {r.acc:.4f} ± {r.acc_stderr:.4f}, acc_norm {r.acc_norm:.4f} (n={r.n}, {r.n / dt:.2f} items/s)",
              flush=True)
    out["perplexity"] = {}
    for name, f in (("wikitext2", "wikitext2_test.raw"), ("ptb", "ptb.test.txt")):
        out["perplexity"][name] = {}
        for label, m in (("dense", dense), ("pruned", pruned)):
            out["perplexity"][name][label] = evaluate_perplexity(m, tok, str(SHARED / "text" / f), seq_len=256,
                                                                 max_tokens=args.ppl_tokens, progress=False)
        print(f"perplexity {name}: {out['perplexity'][name]}", flush=True)
    out["speed"] = measure_speed({"dense": dense, "pruned": pruned}, prompt_len=128, new_tokens=32, repeats=5,
                                 progress=False)
    print({k: (round(v["prefill_tokens_per_s"], 1), round(v["decode_tokens_per_s"], 1)) for k, v in out["speed"].items()},
          flush=True)
    out["prefix_reuse"] = {}
    for reuse in (False, "auto"):
        t0 = time.perf_counter()
        r = evaluate_task(dense, tok, "arc_easy", limit=args.reuse_items, seed=1, task_dir=eval_dir, prefix_reuse=reuse,
                          batch_size=args.batch_size, progress=False)
        out["prefix_reuse"][str(reuse)] = {"items_per_s": r.n / (time.perf_counter() - t0), "acc": r.acc,
                                           "loglikelihoods": r.loglikelihoods}
    a, b = (out["prefix_reuse"][k].pop("loglikelihoods") for k in ("False", "auto"))
    out["prefix_reuse"]["max_abs_ll_diff"] = max(abs(x - y) for la, lb in zip(a, b) for x, y in zip(la, lb))
    print("prefix reuse:", out["prefix_reuse"], flush=True)
    try:
        from hf_streamline.evaluation import compare_with_lm_eval, make_hflm

        lm = make_hflm(dense, tok, batch_size=args.batch_size)
        out["lm_eval"] = compare_with_lm_eval(dense, tok, "arc_easy", limit=args.lm_eval_items, seed=2,
                                              task_dir=eval_dir, batch_size=args.batch_size, lm=lm)
        print("lm-eval:", out["lm_eval"], flush=True)
    except Exception as exc:  # noqa: BLE001 - record what blocked it
        out["lm_eval"] = {"error": f"{type(exc).__name__}: {exc}"}
        print("lm-eval failed:", out["lm_eval"], flush=True)
    out["total_seconds"] = time.perf_counter() - t_start
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"total {out['total_seconds']:.0f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
