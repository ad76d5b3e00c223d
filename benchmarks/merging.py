"""Benchmark: SLM layer merging -- PPL at 4/8/11 removed (paper vs defaults), what each rule does, search cost, CKA.

Sections (``--sections``, comma-separated; default ``ppl``):

- ``stories``: stories260K (5 layers): output cosine of each rule over growing windows, efficient vs naive search.
- ``rules``: SmolLM2-135M: output cosine (merged vs original final output) of one window ending at layer 28 (the
  last layer, 29, is never merged) of n = 2 .. 13 layers, for every rule -- where the literal ``rdsc`` collapses.
- ``search``: SmolLM2: target mode (8 layers) with ``top_weights``, then threshold mode at the threshold found, with
  the efficient search and with the naive deep-copy search: windows, layer evaluations, wall time.
- ``ppl``: SmolLM2: WikiText-2 perplexity (``--eval-tokens``, default 32,768, in 1024-token windows) of SLM at
  ``--ks`` (default 4, 8, 11) layers removed, for the paper's search (``output_cosine``, cumulative scoring,
  ``top_weights``) and the library's defaults (``MergeConfig()``), next to plain removal of the layers each merge
  removed (the ``drop`` rule on the same windows) and ``block_influence`` removal of K layers; one
  :class:`WindowSearch` per criterion serves every K (memoised trials).  Results also go to ``--json``.
- ``cka``: SmolLM2 linear-CKA map of the 30 layer outputs (JSON + PNG).

    .venv/bin/python benchmarks/merging.py [--sections stories,rules,search,ppl,cka] [--samples 2] [--seq-len 128]
        [--eval-tokens 32768] [--ks 4,8,11] [--ppl-samples 8] [--ppl-seq-len 128] [--paper-plain-ks 8]
        [--png docs/merging_cka_smollm2.png] [--json benchmarks/merging_ppl.json]

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
        s = WindowSearch(model, batches, rule=rule, similarity="output_cosine", scoring="cumulative", progress=False)
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
        r = search_merge_windows(model, calib, batch_size=bs, progress=False, **{**PAPER, **kw}, **extra)
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


PAPER = {"similarity": "output_cosine", "scoring": "cumulative", "rule": "top_weights"}


def criteria() -> dict[str, dict]:
    """The paper's search (released code: output cosine, cumulative, top_weights) and the library's defaults."""
    from hf_streamline.merging import MergeConfig

    d = MergeConfig()
    default = {"similarity": d.similarity, "scoring": d.scoring, "rule": d.rule}
    return {"paper": PAPER, "default": default}


def fmt_windows(windows) -> str:
    return ", ".join(f"{w[0]}..{w[-1]}" for w in windows)


def ppl_section(model, tok, a) -> dict:
    """WikiText-2 PPL (1024-token windows) of SLM at each K of --ks, for the paper's search and the defaults, next to
    plain removal of the layers each merge removed and block_influence removal of K layers."""
    from hf_streamline import evaluate_perplexity, prune
    from hf_streamline.merging import WindowSearch, merge_layers
    from hf_streamline.perplexity import text_token_ids
    from hf_streamline.selection import Target

    ks = [int(k) for k in a.ks.split(",")]
    plain_ks = [int(k) for k in a.paper_plain_ks.split(",")] if a.paper_plain_ks else ks
    eval_ids = text_token_ids(tok, str(EVAL), max_tokens=a.eval_tokens)
    cal = calibration(tok, a.ppl_samples, a.ppl_seq_len)
    batches = list(cal.batches(8))
    out: dict = {"ks": ks, "eval_tokens": int(eval_ids.numel()), "eval_seq_len": 1024,
                 "calibration": f"{a.ppl_samples} x {a.ppl_seq_len}", "criteria": criteria(), "rows": {}}
    t_all = time.perf_counter()

    def ev(m) -> float:
        t = time.perf_counter()
        p = evaluate_perplexity(m, tok, eval_ids, seq_len=1024, batch_size=4, progress=False)
        print(f"    ppl {p:.2f} ({time.perf_counter() - t:.0f} s)", flush=True)
        return p

    print("dense ...", flush=True)
    out["dense"] = ev(model)
    for k in ks:
        pruned, plan = prune(copy.deepcopy(model), metric="block_influence", target=Target(layers=k),
                             calibration=cal, progress=False)
        print(f"block_influence {k}: {plan.removed_layers}", flush=True)
        out["rows"][f"block_influence/{k}"] = {"removed": plan.removed_layers, "ppl": ev(pruned)}
        del pruned
    for name, crit in out["criteria"].items():
        t = time.perf_counter()
        search = WindowSearch(model, batches, rule=crit["rule"], similarity=crit["similarity"],
                              scoring=crit["scoring"], progress=False)
        search.prepare()
        found = {}
        try:
            for k in ks:
                final, thr, interval, steps = search.target(k)
                found[k] = (final, thr, interval, len(steps))
        finally:
            search.restore()
        search_s = time.perf_counter() - t
        print(f"{name} search ({crit}): {search_s:.0f} s, {search.counts['trials_run']} trials", flush=True)
        for k in ks:
            final, thr, interval, n_steps = found[k]
            windows = [w["layers"] for w in final.windows]
            removed = sorted(i for w in windows for i in w[1:])
            print(f"{name} {k}: windows {fmt_windows(windows)}, threshold {thr:.4f}", flush=True)
            merged = merge_layers(copy.deepcopy(model), windows, crit["rule"])
            row = {"windows": windows, "removed": removed, "threshold": thr, "interval": interval,
                   "bisection_steps": n_steps, "final_similarity": final.windows[-1]["similarity"],
                   "ppl": ev(merged)}
            del merged
            if crit["rule"] == "drop":
                row["plain_ppl"] = row["ppl"]  # the drop rule *is* plain removal of the same layers
            elif name == "paper" and k not in plain_ks:
                row["plain_ppl"] = None
            else:
                plain = merge_layers(copy.deepcopy(model), windows, "drop")
                row["plain_ppl"] = ev(plain)
                del plain
            out["rows"][f"{name}/{k}"] = row
        out[f"{name}_search_seconds"] = search_s
    out["seconds"] = time.perf_counter() - t_all
    out["loadavg_end"] = os.getloadavg()
    crit = out["criteria"]
    md = [f"WikiText-2 test, first {out['eval_tokens']} tokens in 1024-token windows; searches and block influence on "
          f"{out['calibration']} calibration tokens (Wikipedia, disjoint); dense PPL {out['dense']:.2f}.",
          "",
          f"paper = `{crit['paper']['similarity']}`, {crit['paper']['scoring']} scoring, `{crit['paper']['rule']}`; "
          f"default = `{crit['default']['similarity']}`, {crit['default']['scoring']} scoring, "
          f"`{crit['default']['rule']}` (with `drop`, SLM *is* plain removal of the layers it selected).",
          "",
          "| removed | paper SLM: windows | paper SLM | plain removal of the same layers | default SLM: windows | "
          "default SLM | plain removal of the same layers | block influence: layers | block influence |",
          "|---|---|---|---|---|---|---|---|---|"]
    for k in ks:
        p, d, b = out["rows"][f"paper/{k}"], out["rows"][f"default/{k}"], out["rows"][f"block_influence/{k}"]
        pp = "-" if p["plain_ppl"] is None else f"{p['plain_ppl']:.1f}"
        md.append(f"| {k} | {fmt_windows(p['windows'])} | {p['ppl']:.1f} | {pp} | {fmt_windows(d['windows'])} | "
                  f"{d['ppl']:.1f} | {d['plain_ppl']:.1f} | {b['removed']} | {b['ppl']:.1f} |")
    md += ["", f"Section wall time {out['seconds']:.0f} s (paper searches {out['paper_search_seconds']:.0f} s, "
               f"default searches {out['default_search_seconds']:.0f} s, one WindowSearch per criterion for all K); "
               f"load average at the end {tuple(round(x, 2) for x in out['loadavg_end'])}."]
    out["markdown"] = "\n".join(md)
    print("\n" + out["markdown"])
    return out


def write_results_md(path: str, section: str) -> None:
    """Replace the body of the "## Perplexity at 4, 8 and 11 layers removed" section of ``path`` with ``section``."""
    p = Path(path)
    text = p.read_text()
    head = "## Perplexity at 4, 8 and 11 layers removed"
    i = text.index(head)
    j = text.index("\n", i) + 1
    k = text.find("\n## ", j)
    k = len(text) if k < 0 else k + 1
    p.write_text(text[:j] + "\n" + section.strip() + "\n\n" + text[k:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="ppl")
    ap.add_argument("--samples", type=int, default=2, help="SmolLM2 calibration sequences for the searches")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-tokens", type=int, default=32768, help="ppl: WikiText-2 tokens (1024-token windows)")
    ap.add_argument("--ks", default="4,8,11", help="ppl: numbers of layers to remove")
    ap.add_argument("--ppl-samples", type=int, default=8, help="ppl: calibration sequences (searches, block influence)")
    ap.add_argument("--paper-plain-ks", default="", help="ppl: evaluate plain removal of the paper's layers only at "
                    "these K (comma-separated; default: every K)")
    ap.add_argument("--results-md", default="", help="ppl: write the setup and the table into this Markdown file "
                    "(the section '## Perplexity at 4, 8 and 11 layers removed')")
    ap.add_argument("--ppl-seq-len", type=int, default=256, help="ppl: calibration sequence length")
    ap.add_argument("--cka-samples", type=int, default=8)
    ap.add_argument("--png", default=str(ROOT / "docs" / "merging_cka_smollm2.png"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "merging_ppl.json"))
    a = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    warnings.simplefilter("ignore")
    sections = a.sections.split(",")
    results = json.loads(Path(a.json).read_text()) if Path(a.json).exists() else {}
    print(header(), flush=True)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    results["loadavg_start"] = os.getloadavg()
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
        r = search_merge_windows(model, cal, remove=8, batch_size=8, progress=False, **PAPER)
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
        results["ppl"] = ppl_section(model, tok, a)
        if a.results_md:
            from hf_streamline.utils import versions

            v = versions()
            cmd = " ".join([".venv/bin/python"] + [str(Path(sys.argv[0]))] + sys.argv[1:])
            setup = "\n".join([
                f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (serialised by a lock), "
                f"torch threads {torch.get_num_threads()}, no GPU; load average at the start "
                f"{tuple(round(x, 2) for x in results['loadavg_start'])}.",
                f"- Versions: python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
                f"hf_streamline {v['hf_streamline']} (this tree).",
                "- Model: SmolLM2-135M-Instruct (bundled GGUF Q4_1, dequantized to fp32, 30 layers).",
                f"- Command: `{cmd}` (written by the script itself, `--results-md`).",
                "",
            ])
            write_results_md(a.results_md, setup + "\n" + results["ppl"]["markdown"])

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
