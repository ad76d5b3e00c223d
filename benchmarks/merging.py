"""Benchmark: SLM layer merging -- what each merge rule does, efficient vs naive search, PPL at 8 removed, CKA map.

Sections (``--sections``, comma-separated; default all):

- ``stories``: stories260K (5 layers): output cosine of each rule over growing windows, efficient vs naive search.
- ``rules``: SmolLM2-135M: output cosine (merged vs original final output) of one window ending at layer 28 (the
  last layer, 29, is never merged) of n = 2 .. 13 layers, for every rule -- where the literal ``rdsc`` collapses.
- ``search``: SmolLM2: target mode (8 layers) with ``top_weights``, then threshold mode at the threshold found, with
  the efficient search and with the naive deep-copy search: windows, layer evaluations, wall time.
- ``ppl``: SmolLM2: WikiText-2 perplexity of SLM at 8 layers removed for every rule, next to the dense model and
  ``block_influence`` removal of 8 layers.
- ``cka``: SmolLM2 linear-CKA map of the 30 layer outputs (JSON + PNG).

    .venv/bin/python benchmarks/merging.py [--sections stories,rules,search,ppl,cka] [--samples 2] [--seq-len 128]
        [--eval-tokens 4096] [--png docs/merging_cka_smollm2.png] [--json /tmp/merging_bench.json]

Each section prints a Markdown table; timings are wall-clock on whatever machine runs it (noisy when shared).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
CALIB = SHARED / "train" / "wikipedia_30_articles.txt"
EVAL = SHARED / "text" / "wikitext2_test.raw"
RULES = ("top_weights", "rdsc", "average", "drop")


def header() -> str:
    from hf_streamline.utils import versions

    v = versions()
    return (f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs (shared), "
            f"torch threads {torch.get_num_threads()}; python {v['python']}, torch {v['torch']}, "
            f"transformers {v['transformers']}; command: {' '.join([Path(sys.executable).name] + sys.argv)}")


def load(spec):
    from hf_streamline import load_model_and_tokenizer

    return load_model_and_tokenizer(spec, dtype="float32")


def calibration(tok, n, T, seed=0):
    from hf_streamline import build_calibration

    return build_calibration(tok, str(CALIB), n_samples=n, seq_len=T, seed=seed)


def window_sims(model, batches, top, sizes, rules):
    """Output cosine of the model with one window [top-n+1 .. top] merged, each rule, each n (efficient trials)."""
    from hf_streamline.merging import WindowSearch

    out = {}
    for rule in rules:
        s = WindowSearch(model, batches, rule=rule, progress=False)
        s.prepare()
        out[rule] = {n: s.trial([], top - n + 1, top)[0] for n in sizes}
        s.restore()
    return out


def table_window_sims(sims, sizes):
    lines = ["| rule | " + " | ".join(f"n={n} ({n - 1} removed)" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for rule, row in sims.items():
        lines.append(f"| `{rule}` | " + " | ".join(f"{row[n]:.3f}" for n in sizes) + " |")
    return "\n".join(lines)


def search_pair(model, calib, bs, **kw):
    from hf_streamline.merging import search_merge_windows

    res = {}
    for name, extra in (("efficient", {}), ("full forwards, in place", {"reuse_hidden": False}),
                        ("naive deep copy", {"naive": True})):
        t = time.perf_counter()
        r = search_merge_windows(model, calib, batch_size=bs, progress=False, **kw, **extra)
        res[name] = {"windows": [w["layers"] for w in r.windows], "evals": r.evaluations["total"],
                     "naive_predicted": r.evaluations["naive_total"], "seconds": time.perf_counter() - t,
                     "trials": r.evaluations["trials_run"], "threshold": r.threshold}
    return res


def table_search(res):
    lines = ["| search | windows (original indices) | trials run | layer evaluations | wall time (s) |",
             "|---|---|---|---|---|"]
    for name, r in res.items():
        w = ", ".join(f"{x[0]}..{x[-1]}" for x in r["windows"]) or "-"
        lines.append(f"| {name} | {w} | {r['trials']} | {r['evals']} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def ppl(model, tok, tokens):
    from hf_streamline import evaluate_perplexity

    return evaluate_perplexity(model, tok, str(EVAL), seq_len=256, max_tokens=tokens, batch_size=4, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="stories,rules,search,ppl,cka")
    ap.add_argument("--samples", type=int, default=2, help="SmolLM2 calibration sequences for the searches")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--ppl-samples", type=int, default=1, help="calibration sequences of the per-rule searches (ppl)")
    ap.add_argument("--cka-samples", type=int, default=8)
    ap.add_argument("--png", default=str(ROOT / "docs" / "merging_cka_smollm2.png"))
    ap.add_argument("--json", default="/tmp/merging_bench.json")
    a = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    warnings.simplefilter("ignore")
    sections = a.sections.split(",")
    results = json.loads(Path(a.json).read_text()) if Path(a.json).exists() else {}
    print(header(), flush=True)
    t_all = time.perf_counter()

    if "stories" in sections:
        model, tok = load(str(SHARED / "models" / "stories260K"))
        cal = calibration(tok, 8, 128)
        batches = list(cal.batches(8))
        sims = window_sims(model, batches, 3, [2, 3, 4], RULES)
        res = search_pair(model, cal, 8, threshold=0.5)
        tgt = search_pair(model, cal, 8, remove=2)
        results["stories"] = {"window_sims": sims, "threshold_0.5": res, "remove_2": tgt}
        print("\n### stories260K (5 layers), 8 x 128 calibration tokens\n")
        print("Output cosine with one window ending at layer 3 merged:\n")
        print(table_window_sims(sims, [2, 3, 4]))
        print("\nThreshold 0.5, top_weights:\n")
        print(table_search(res))
        print("\nTarget: 2 layers removed, top_weights (bisection included):\n")
        print(table_search(tgt), flush=True)

    need_smol = any(s in sections for s in ("rules", "search", "ppl", "cka"))
    if need_smol:
        model, tok = load(None)
        cal = calibration(tok, a.samples, a.seq_len)
        batches = list(cal.batches(8))

    if "rules" in sections:
        sizes = [2, 3, 5, 9, 13]
        t = time.perf_counter()
        sims = window_sims(model, batches, 28, sizes, RULES)
        results["rules"] = {"window_sims": sims, "seconds": time.perf_counter() - t}
        print(f"\n### SmolLM2-135M: output cosine with one window [29-n .. 28] merged "
              f"({a.samples} x {a.seq_len} tokens)\n")
        print(table_window_sims(sims, sizes), flush=True)

    searches = {}
    if "search" in sections:
        from hf_streamline.merging import search_merge_windows

        t = time.perf_counter()
        r = search_merge_windows(model, cal, remove=8, rule="top_weights", batch_size=8, progress=False)
        t_target = time.perf_counter() - t
        searches["top_weights"] = r
        thr = r.threshold
        pair = search_pair(model, cal, 8, threshold=thr, rule="top_weights")
        results["search"] = {"target": {"threshold": thr, "interval": r.threshold_interval,
                                        "windows": [w["layers"] for w in r.windows], "evaluations": r.evaluations,
                                        "seconds": t_target, "bisection": r.bisection},
                             "threshold_mode": pair}
        print(f"\n### SmolLM2-135M: SLM search, 8 layers removed, top_weights ({a.samples} x {a.seq_len} tokens)\n")
        ev = r.evaluations
        print(f"Target mode: threshold found {thr:.4f} (interval {r.threshold_interval}), windows "
              f"{[w['layers'] for w in r.windows]}, {len(r.bisection)} searches in the bisection, "
              f"{ev['trials_run']} trials run + {ev['trials_memoised']} memoised; layer evaluations {ev['total']} "
              f"vs {ev['naive_total']} for the naive search of the same trials ({ev['ratio_vs_naive']:.2f}x); "
              f"{t_target:.1f} s.\n")
        print(f"Threshold mode at {thr:.4f}:\n")
        print(table_search(pair), flush=True)

    if "ppl" in sections:
        from hf_streamline import prune
        from hf_streamline.merging import merge_layers, search_merge_windows
        from hf_streamline.selection import Target

        rows = []
        t = time.perf_counter()
        ppl_cal = cal if a.ppl_samples == a.samples else calibration(tok, a.ppl_samples, a.seq_len)
        rows.append(("dense (30 layers)", "-", ppl(model, tok, a.eval_tokens), None))
        bi_cal = calibration(tok, 8, 256)
        pruned, plan = prune(copy.deepcopy(model), metric="block_influence", target=Target(layers=8),
                             calibration=bi_cal, progress=False)
        rows.append(("block_influence removal", str(plan.removed_layers), ppl(pruned, tok, a.eval_tokens), None))
        del pruned
        for rule in RULES:
            r = (searches.get(rule) if ppl_cal is cal else None) or search_merge_windows(
                model, ppl_cal, remove=8, rule=rule, batch_size=8, progress=False)
            merged = merge_layers(copy.deepcopy(model), [w["layers"] for w in r.windows], rule)
            rows.append((f"SLM `{rule}`", ", ".join(f"{w['layers'][0]}..{w['layers'][-1]}" for w in r.windows),
                         ppl(merged, tok, a.eval_tokens), (r.threshold, r.final_similarity)))
            print(f"  {rows[-1]} ({time.perf_counter() - t:.0f} s)", flush=True)
            del merged
        results["ppl"] = {"rows": rows, "seconds": time.perf_counter() - t}
        print(f"\n### SmolLM2-135M, 8 of 30 layers removed: WikiText-2 perplexity (first {a.eval_tokens} tokens, "
              f"256-token windows); SLM searches on {a.ppl_samples} x {a.seq_len} calibration tokens, "
              f"block_influence scored on 8 x 256 ({time.perf_counter() - t:.0f} s)\n")
        print("| model | layers / windows | threshold found | output cosine | PPL |\n|---|---|---|---|---|")
        for name, lay, p, extra in rows:
            thr, sim = (f"{extra[0]:.4f}", f"{extra[1]:.3f}") if extra else ("-", "-")
            print(f"| {name} | {lay} | {thr} | {sim} | {p:.1f} |")
        sys.stdout.flush()

    if "cka" in sections:
        from hf_streamline.merging import layer_similarity

        t = time.perf_counter()
        cal8 = calibration(tok, a.cka_samples, 128)
        results["cka"] = {}
        for skip in (0, 1):
            sim = layer_similarity(model, cal8, kind="cka_linear", batch_size=4, max_gram_tokens=512,
                                   skip_first_tokens=skip, progress=False)
            sim.details["model"] = "SmolLM2-135M-Instruct"
            png = a.png if skip == 0 else a.png.replace(".png", f"_skip{skip}.png")
            sim.save(Path(a.json).with_name(Path(png).stem + ".json"))
            note = "" if skip == 0 else f", first {skip} token(s) of each sequence left out"
            sim.plot(png, title=f"SmolLM2-135M: linear CKA of layer outputs ({a.cka_samples} x 128 tokens{note})")
            m = sim.tensor()
            results["cka"][skip] = [float(m[i, i + 1]) for i in range(29)]
            print(f"\n### SmolLM2-135M linear CKA map{note}: {png}\n")
            print("adjacent-layer CKA: " + ", ".join(f"{i}-{i + 1}: {float(m[i, i + 1]):.2f}" for i in range(29)))
        results["cka"]["seconds"] = time.perf_counter() - t

    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    Path(a.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
