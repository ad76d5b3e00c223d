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
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "evaluation_results.md"),
                    help="markdown results file to write (default benchmarks/evaluation_results.md)")
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
    load_start = os.getloadavg()[0]
    eval_dir = str(SHARED / "eval")
    dense, tok = load_model_and_tokenizer(str(bundled_model_dir()), dtype="float32")
    pruned = copy.deepcopy(dense)
    remove_layers(pruned, REMOVE)
    out: dict = {"versions": versions(), "machine": f"{platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} cores (shared), torch threads {args.threads}", "limit": args.limit, "ppl_tokens": args.ppl_tokens,
                 "reuse_items": args.reuse_items,
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
    out["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    out["command"] = "python benchmarks/evaluation.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("json", "results"))
    Path(args.json).write_text(json.dumps(out, indent=2))
    Path(args.results).write_text(results_markdown(out, eval_dir), encoding="utf-8")
    print(f"total {out['total_seconds']:.0f} s; wrote {args.json} and {args.results}")


def _task_size(eval_dir: str, task: str) -> int:
    with open(Path(eval_dir) / f"{task}.jsonl", encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def results_markdown(out: dict, eval_dir: str) -> str:
    v = out["versions"]
    limit = out["limit"]
    lines = [
        "# Evaluation benchmark (SmolLM2-135M-Instruct, CPU)", "",
        f"- command: `{out['command']}` ({out['total_seconds'] / 60:.1f} min wall in all)",
        f"- machine: {out['machine']}; 1-min load average {out['load_average']['start']:.2f} at the start, "
        f"{out['load_average']['end']:.2f} at the end",
        "- versions: " + ", ".join(f"{k} {v[k]}" for k in v),
        "- model: the bundled SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32, 30 layers); \"pruned\" = layers "
        f"{', '.join(map(str, REMOVE))} removed (22 layers; the lowest block influence in DESIGN.md), no healing",
        f"- items: a seeded sample (seed 0) of {limit} items per task, or the full set where it is smaller (marked);"
        " ± is the standard error",
        "- prompts are the shared files' prompts (e.g. ARC: `Question: ...?` followed by ` choice`; lm-eval's built-in"
        " ARC config adds `\\nAnswer:`), so these are not comparable with leaderboard numbers for this model", "",
        "## Zero-shot accuracy, dense", "",
        "| task | items (of the full set) | acc | acc_norm | items/s (our scorer) |", "|---|---:|---:|---:|---:|"]
    for task, r in out["tasks"].items():
        size = _task_size(eval_dir, task)
        items = f"{r['n']} (full set)" if r["n"] >= size else f"{r['n']} of {size}"
        acc = f"{r['acc']:.3f} ± {r['acc_stderr']:.3f}"
        if r.get("perplexity") is not None:
            acc += f" (continuation perplexity {r['perplexity']:.1f})"
        norm = "(= acc)" if r["kind"] != "multiple_choice" else f"{r['acc_norm']:.3f} ± {r['acc_norm_stderr']:.3f}"
        lines.append(f"| {task} | {items} | {acc} | {norm} | {r['items_per_s']:.2f} |")
    mean = sum(r["acc"] for r in out["tasks"].values()) / len(out["tasks"])
    lines += [f"| **mean** | | **{mean:.3f}** | | |", ""]
    full = {t: _task_size(eval_dir, t) for t in out["tasks"]}
    if any(r["n"] < full[t] for t, r in out["tasks"].items()):
        est = sum(full[t] / r["items_per_s"] for t, r in out["tasks"].items())
        lines += [f"Why not the full sets: they hold {sum(full.values()):,} items; at the items/s measured here that is "
                  f"about {est / 60:.0f} min for the dense model alone, against "
                  f"{sum(r['seconds'] for r in out['tasks'].values()) / 60:.0f} min for this sample. Run "
                  "`--limit 100000` for the full sets.", ""]
    ppl = out["perplexity"]
    lines += [f"## Perplexity (first {out.get('ppl_tokens', '?')} tokens of each text, non-overlapping 256-token windows)",
              "", "| text | dense | pruned (8 of 30 layers removed) |", "|---|---:|---:|"]
    for name, per in ppl.items():
        lines.append(f"| {name} | {per['dense']:.2f} | {per['pruned']:.2f} |")
    sp, pa = out["speed"], out["params"]
    d = sp["dense"]
    lines += ["", f"## Size and speed (batch 1, prompt {d['prompt_len']} tokens, {d['new_tokens']} decoded tokens with "
              f"the KV cache, median of {d['repeats']} interleaved runs)", "",
              "| model | params | non-embedding params | prefill tokens/s | decode tokens/s |", "|---|---:|---:|---:|---:|"]
    for label in ("dense", "pruned"):
        s_ = sp[label]
        rp = "" if label == "dense" else f" ({s_['prefill_tokens_per_s'] / d['prefill_tokens_per_s']:.2f}×)"
        rd = "" if label == "dense" else f" ({s_['decode_tokens_per_s'] / d['decode_tokens_per_s']:.2f}×)"
        lines.append(f"| {label} | {pa[label]['params']:,} | {pa[label]['non_embedding_params']:,} | "
                     f"{s_['prefill_tokens_per_s']:.1f}{rp} | {s_['decode_tokens_per_s']:.1f}{rd} |")
    pr = out["prefix_reuse"]
    lines += ["", "## Shared-prefix reuse and lm-eval-harness", "", "| run (ARC-Easy) | items | items/s | result |",
              "|---|---:|---:|---|",
              f"| our scorer, prefix reuse off | {out.get('reuse_items', '?')} (seed 1) | {pr['False']['items_per_s']:.2f} | "
              f"acc {pr['False']['acc']:.3f} |",
              f"| our scorer, prefix reuse auto | {out.get('reuse_items', '?')} (seed 1) | {pr['auto']['items_per_s']:.2f} "
              f"({pr['auto']['items_per_s'] / pr['False']['items_per_s']:.2f}×) | acc {pr['auto']['acc']:.3f}; largest "
              f"log-likelihood difference to \"off\": {pr['max_abs_ll_diff']:.2g} |"]
    le = out["lm_eval"]
    if "error" in le:
        lines += ["", f"lm-eval-harness could not run: {le['error']}"]
    else:
        lines += [f"| our scorer | {le['n']} (seed 2) | {le['items_per_s']:.2f} | acc {le['acc']:.3f}, acc_norm "
                  f"{le['acc_norm']:.3f} |",
                  f"| lm-eval-harness `HFLM` (same model object, same items, local YAML task) | {le['n']} | "
                  f"{le['items_per_s_lm_eval']:.2f} | acc {le['acc_lm_eval']:.3f}, acc_norm {le['acc_norm_lm_eval']:.3f}; "
                  f"largest per-request log-likelihood difference to ours: {le['max_abs_loglikelihood_diff']:.2g} |", "",
                  f"Our scorer: {le['items_per_s'] / le['items_per_s_lm_eval']:.2f}× the items/s of lm-eval on the same "
                  "items (shared-prefix reuse and `logits_to_keep`). lm-eval ran offline (a local JSON-lines task "
                  "loaded with `TaskManager(include_path=..., include_defaults=False)`)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
