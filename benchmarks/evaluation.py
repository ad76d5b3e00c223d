"""Benchmark of the evaluation code on SmolLM2-135M-Instruct (the bundled model), CPU.

    .venv/bin/python benchmarks/evaluation.py --limit 100 --threads 1 --json /tmp/evaluation_bench.json

1. zero-shot accuracy of the dense model on every task in ../shared/data/eval (a seeded sample of --limit items per
   task, the full set when it is smaller), with items/s of our scorer, with lm-eval's stock prompts (issue 14), beside
   the numbers the previous run of this benchmark measured with hf-streamline 0.1's prompts on the same items (read
   from the results JSON before it is overwritten; two tasks re-scored with the old prompts to check they reproduce);
2. WikiText-2 and PTB perplexity (first --ppl-tokens tokens of each) of the dense and a pruned model (8 layers removed:
   12-17, 25, 26, the lowest block influence in DESIGN.md): token perplexity in 256-token windows (this benchmark's
   earlier protocol) and in the papers' 2048-token windows, with word and byte perplexity (lm-eval's wikitext metrics);
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
TASKS = ["arc_easy", "arc_challenge", "piqa", "openbookqa", "boolq", "copa", "winogrande", "lambada_openai"]
# the 0.1 prompts: the shared files' rows as stored, with the 0.1 delimiters
OLD_DELIMITER = {"piqa": ""}
OLD_FILE = {"openbookqa": "openbook_qa"}
REMOVE = [12, 13, 14, 15, 16, 17, 25, 26]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--lm-eval-items", type=int, default=40)
    ap.add_argument("--reuse-items", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "evaluation_results.json"))
    ap.add_argument("--recheck", default="copa,openbookqa", help="tasks re-scored with the 0.1 prompts")
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "evaluation_results.md"),
                    help="markdown results file to write (default benchmarks/evaluation_results.md)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the markdown from the JSON, measure nothing")
    args = ap.parse_args()
    if args.report_only:
        out = json.loads(Path(args.json).read_text())
        Path(args.results).write_text(results_markdown(out, str(SHARED / "eval")), encoding="utf-8")
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from hf_streamline import load_model_and_tokenizer, remove_layers
    from hf_streamline.evaluation import evaluate_task, measure_speed, parameter_counts
    from hf_streamline.loading import bundled_model_dir
    from hf_streamline.perplexity import perplexity_details
    from hf_streamline.utils import versions

    previous = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    if "previous_prompts" in previous:  # a re-run: keep the 0.1-prompt numbers of the run before the change
        old_tasks = previous["previous_prompts"]
    else:
        old_tasks = {("openbookqa" if k == "openbook_qa" else k): v for k, v in previous.get("tasks", {}).items()}
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
    out["previous_prompts"] = old_tasks
    out["recheck"] = {}
    from dataclasses import replace as dc_replace

    from hf_streamline.evaluation.tasks import get_task_spec, load_jsonl_task

    for task in [t for t in args.recheck.split(",") if t and t in old_tasks]:
        f = Path(eval_dir) / f"{OLD_FILE.get(task, task)}.jsonl"
        spec = dc_replace(get_task_spec(task), hub=None, delimiter=OLD_DELIMITER.get(task, " "), path=str(f))
        r = evaluate_task(dense, tok, load_jsonl_task(f, spec), limit=args.limit, seed=0, batch_size=args.batch_size,
                          progress=False)
        out["recheck"][task] = {"acc": r.acc, "acc_norm": r.acc_norm, "n": r.n,
                                "previous_acc": old_tasks[task]["acc"], "previous_acc_norm": old_tasks[task]["acc_norm"]}
        print(f"recheck {task} (0.1 prompts): {out['recheck'][task]}", flush=True)
    out["perplexity"] = {}
    for name, f in (("wikitext2", "wikitext2_test.raw"), ("ptb", "ptb.test.txt")):
        out["perplexity"][name] = {}
        for label, m in (("dense", dense), ("pruned", pruned)):
            per = {}
            for seq_len in (256, None):
                d = perplexity_details(m, tok, str(SHARED / "text" / f), seq_len=seq_len, max_tokens=args.ppl_tokens,
                                       progress=False)
                per[str(d["seq_len"])] = {k: d[k] for k in ("token_perplexity", "word_perplexity", "byte_perplexity",
                                                             "bits_per_byte", "tokens", "words", "bytes")}
            out["perplexity"][name][label] = per
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
    with open(Path(eval_dir) / f"{OLD_FILE.get(task, task)}.jsonl", encoding="utf-8") as fh:
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
        "- prompts: **lm-eval's stock templates** (issue 14; e.g. ARC `Question: ...\\nAnswer:` + ` choice`), the same "
        "requests lm-eval builds from its own YAMLs (tests/test_lm_eval_prompts.py); \"0.1 prompts\" are the numbers the "
        "previous run of this benchmark measured on the same items with the shared files' baked-in prompts (ARC/PIQA "
        "without `\\nAnswer:`, BoolQ with `Passage:`, COPA with a comma)", "",
        "## Zero-shot accuracy, dense", "",
        "| task | items (of the full set) | acc | acc_norm | acc, 0.1 prompts | acc_norm, 0.1 prompts | Δ acc | Δ acc_norm "
        "| items/s (our scorer) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    prev = out.get("previous_prompts", {})
    for task, r in out["tasks"].items():
        size = _task_size(eval_dir, task)
        items = f"{r['n']} (full set)" if r["n"] >= size else f"{r['n']} of {size}"
        acc = f"{r['acc']:.3f} ± {r['acc_stderr']:.3f}"
        if r.get("perplexity") is not None:
            acc += f" (continuation perplexity {r['perplexity']:.1f})"
        norm = "(= acc)" if r["kind"] != "multiple_choice" else f"{r['acc_norm']:.3f} ± {r['acc_norm_stderr']:.3f}"
        o = prev.get(task)
        if o and o.get("n") == r["n"]:
            old = f"{o['acc']:.3f} | {o['acc_norm']:.3f} | {r['acc'] - o['acc']:+.3f} | {r['acc_norm'] - o['acc_norm']:+.3f}"
        else:
            old = "— | — | — | —"
        lines.append(f"| {task} | {items} | {acc} | {norm} | {old} | {r['items_per_s']:.2f} |")
    mean = sum(r["acc"] for r in out["tasks"].values()) / len(out["tasks"])
    old_mean = (sum(prev[t]["acc"] for t in out["tasks"]) / len(out["tasks"])) if all(t in prev for t in out["tasks"]) else None
    lines += [f"| **mean** | | **{mean:.3f}** | | " + (f"{old_mean:.3f} | | {mean - old_mean:+.3f} |" if old_mean is not None
                                                         else "— | | — |") + " | |", ""]
    moved = [(t, r["acc"] - prev[t]["acc"]) for t, r in out["tasks"].items() if t in prev and prev[t].get("n") == r["n"]]
    if moved:
        big = [f"{t} {d:+.3f}" for t, d in sorted(moved, key=lambda x: -abs(x[1])) if abs(d) >= 0.005]
        lines += ["What changed with lm-eval's prompts (acc, same items): " + (", ".join(big) if big else "nothing")
                  + "; unchanged: " + (", ".join(t for t, d in moved if abs(d) < 0.005) or "none")
                  + ". BoolQ moves most: lm-eval's template has no `Passage:` label and ends with `\\nAnswer:`, "
                  "and this model's BoolQ accuracy falls below the majority class with it. OpenBookQA, WinoGrande "
                  "and LAMBADA had lm-eval's requests already.", ""]
    rc = out.get("recheck", {})
    if rc:
        lines += ["Check that the 0.1 column is the same measurement: re-scored now with the 0.1 prompts, "
                  + "; ".join(f"{t} acc {v['acc']:.3f} / acc_norm {v['acc_norm']:.3f} (previous run "
                              f"{v['previous_acc']:.3f} / {v['previous_acc_norm']:.3f})" for t, v in rc.items()) + ".", ""]
    full = {t: _task_size(eval_dir, t) for t in out["tasks"]}
    if any(r["n"] < full[t] for t, r in out["tasks"].items()):
        est = sum(full[t] / r["items_per_s"] for t, r in out["tasks"].items())
        lines += [f"Why not the full sets: they hold {sum(full.values()):,} items; at the items/s measured here that is "
                  f"about {est / 60:.0f} min for the dense model alone, against "
                  f"{sum(r['seconds'] for r in out['tasks'].values()) / 60:.0f} min for this sample. Run "
                  "`--limit 100000` for the full sets.", ""]
    ppl = out["perplexity"]
    lines += [f"## Perplexity (first {out.get('ppl_tokens', '?')} tokens of each text, non-overlapping windows)", "",
              "Token perplexity in 256-token windows (this benchmark's earlier protocol) and in 2048-token windows "
              "(the pruning papers', now the default of `evaluate`); word and byte perplexity are the same NLL per "
              "whitespace-separated word / UTF-8 byte (lm-eval's `wikitext` metrics, comparable across tokenizers).", "",
              "| text | model | token PPL, 256 | token PPL, 2048 | word PPL, 2048 | byte PPL, 2048 | bits/byte, 2048 |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for name, per in ppl.items():
        for label, v in per.items():
            a, b = v["256"], v["2048"]
            lines.append(f"| {name} | {label} | {a['token_perplexity']:.2f} | {b['token_perplexity']:.2f} | "
                         f"{b['word_perplexity']:.2f} | {b['byte_perplexity']:.4f} | {b['bits_per_byte']:.4f} |")
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
                  "items (shared-prefix reuse and `logits_to_keep`). lm-eval ran offline: its own stock `arc_easy` YAML, "
                  "included unchanged, over the same items' Hub-schema rows (a local `dataset_path`), so it built its "
                  "requests from its own template."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
