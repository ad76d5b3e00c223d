"""Benchmark: attention/MLP sub-block removal and the KL search on SmolLM2-135M-Instruct (30 layers), issue 13.

Rows (each chosen on the same calibration sequences from Wikipedia articles, disjoint from every evaluation text):
- ``attn8_cosine``: the 8 attention sub-blocks of highest LLM-Drop cosine cos(x, x + attn(norm(x)));
- ``attn8_kl``: 8 attention sub-blocks chosen by the KL search (greedy + evolution);
- ``attn8_ppl``: the same search with BlockPruner's fitness, the pruned model's perplexity of the calibration text;
- ``attn8_kl_32``: the KL search with 4x the calibration tokens (32 sequences), lazy greedy (8 candidates per step
  after the first) and a short evolution, to see whether the fitness sample size decides the choice;
- ``layers3_bi``: the 3 whole layers of lowest block influence (ShortGPT), about the parameters of 8 attentions;
- ``layers8_bi`` / ``layers8_kl``: 8 whole layers by block influence / by the KL search;
- ``sub_kl_p``: attention and MLP units together, by the KL search, under the parameter budget of 8 whole layers.
Columns: WikiText-2 test perplexity (1024-token windows, 32 x 1024 tokens), KL(dense || pruned) per token and top-1
agreement on held-out text (WikiText-2 validation), search cost (trials, layer evaluations, seconds), and for the
attention rows measured greedy-decode speed and KV-cache bytes per token against dense.

Stages write into one JSON file, so the benchmark can run in pieces under the shared CPU lock:

    flock /tmp/hf_cpu.lock .venv/bin/python benchmarks/sublayer.py --stage quality --rows dense,attn8_cosine,...
    flock /tmp/hf_cpu.lock .venv/bin/python benchmarks/sublayer.py --stage speed
    .venv/bin/python benchmarks/sublayer.py --stage report      # writes benchmarks/sublayer_results.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench_common import loadavg, machine, versions

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
CALIB = SHARED / "train" / "wikipedia_30_articles.txt"
WIKITEXT = SHARED / "text" / "wikitext2_test.raw"
HELDOUT = SHARED / "train" / "wikitext2_valid_tokenized.txt"
OUT_JSON = HERE / "sublayer_results.json"
OUT_MD = HERE / "sublayer_results.md"
ROWS = ("dense", "attn8_cosine", "attn8_kl", "attn8_ppl", "attn8_kl_32", "layers3_bi", "layers8_bi", "layers8_kl",
        "sub_kl_p")
LABELS = {"dense": "dense (30 layers)",
          "attn8_cosine": "8 attention sub-blocks, LLM-Drop cosine",
          "attn8_kl": "8 attention sub-blocks, KL search",
          "attn8_ppl": "8 attention sub-blocks, perplexity search (BlockPruner's fitness)",
          "attn8_kl_32": "8 attention sub-blocks, KL search on 32 x 256 calibration tokens (lazy greedy, 8 candidates)",
          "layers3_bi": "3 whole layers, block influence",
          "layers8_bi": "8 whole layers, block influence (ShortGPT)",
          "layers8_kl": "8 whole layers, KL search",
          "sub_kl_p": "attention + MLP units, KL search, params of 8 layers"}


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(path: Path, res: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(path)


# Rows that differ from the command line's search settings: calibration sequences and SearchConfig fields.
ROW_SEARCH = {"attn8_kl_32": dict(samples=32, greedy_candidates=8, generations=5, offspring=4)}


def calibration(tok, a, samples=None):
    from hf_streamline import build_calibration

    return build_calibration(tok, str(CALIB), n_samples=samples or a.samples, seq_len=a.seq_len, seed=0)


def load(a):
    import torch

    torch.set_num_threads(a.threads)
    from hf_streamline import load_model_and_tokenizer
    from hf_streamline.loading import bundled_model_dir

    model, tok = load_model_and_tokenizer(str(bundled_model_dir()), dtype="float32")
    return model, tok, calibration(tok, a)


def measure(model, dense, tok, a) -> dict:
    from hf_streamline import evaluate_perplexity
    from hf_streamline.evaluation.agreement import next_token_agreement

    t = time.perf_counter()
    ppl = evaluate_perplexity(model, tok, str(WIKITEXT), seq_len=1024, max_tokens=a.eval_tokens, batch_size=2,
                              progress=False)
    agree = next_token_agreement(dense, model, tok, str(HELDOUT), seq_len=512, max_tokens=a.kl_tokens, batch_size=2,
                                 progress=False) if dense is not None else {"kl": 0.0, "top1_agreement": 1.0}
    return {"ppl": ppl, "kl": agree["kl"], "top1": agree["top1_agreement"], "eval_seconds": time.perf_counter() - t,
            "params": sum(p.numel() for p in model.parameters())}


def stage_quality(a, res):
    import copy

    from hf_streamline.pruning import prune_units, save_pruned
    from hf_streamline.unit_search import SearchConfig

    rows = [r for r in (a.rows.split(",") if a.rows else ROWS)]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown rows {bad}; choose from {ROWS}")
    model, tok, calib = load(a)
    dense = model
    layer_params = sum(p.numel() for p in dense.model.layers[0].parameters())
    total = sum(p.numel() for p in dense.parameters())
    for row in rows:
        print(f"[{time.strftime('%H:%M:%S')}] {row} (load {loadavg()})", flush=True)
        if row == "dense":
            res.setdefault("rows", {})[row] = dict(measure(dense, None, tok, a), units=[], load=loadavg())
            save_results(Path(a.out), res)
            continue
        over = dict(ROW_SEARCH.get(row, {}))
        samples = over.pop("samples", None)
        search = SearchConfig(**{**dict(fitness="ppl" if row.endswith("_ppl") else "kl", top_k=a.top_k,
                                        generations=a.generations, offspring=a.offspring, seed=0,
                                        batch_size=a.batch_size, progress=False), **over})
        spec = {"attn8_cosine": dict(unit="attention", count=8, selection="scores"),
                "attn8_kl": dict(unit="attention", count=8, selection="search"),
                "attn8_ppl": dict(unit="attention", count=8, selection="search"),
                "attn8_kl_32": dict(unit="attention", count=8, selection="search"),
                "layers3_bi": dict(unit="layer", count=3, selection="scores", metric="block_influence"),
                "layers8_bi": dict(unit="layer", count=8, selection="scores", metric="block_influence"),
                "layers8_kl": dict(unit="layer", count=8, selection="search"),
                "sub_kl_p": dict(unit="sublayer", param_ratio=8 * layer_params / total, selection="search")}[row]
        t = time.perf_counter()
        pruned, plan = prune_units(copy.deepcopy(dense), calibration=calibration(tok, a, samples) if samples else calib,
                                   search=search, batch_size=a.batch_size,
                                   base_model="SmolLM2-135M-Instruct", progress=False, **spec)
        choose_s = time.perf_counter() - t
        rec = dict(measure(pruned, dense, tok, a), units=plan.extra["removed_units"], choose_seconds=choose_s,
                   load=loadavg())
        if "search" in plan.extra:
            s = plan.extra["search"]
            rec["search"] = {k: s[k] for k in ("trials", "layer_evaluations", "best_fitness", "seconds",
                                                "calibration_tokens", "top_k")}
            rec["search"]["greedy_fitness"] = s["greedy"]["fitness"]
            rec["search"]["greedy_units"] = s["greedy"]["units"]
            rec["search"]["generations"] = s["evolution"]["generations"]
            rec["search"]["improvements"] = s["evolution"]["improvements"]
            rec["search"]["settings"] = ROW_SEARCH.get(row, {})
        if row.startswith("attn8"):
            folder = Path(a.models) / row
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            save_pruned(pruned, tok, plan, folder)
            rec["folder"] = str(folder)
        res.setdefault("rows", {})[row] = rec
        save_results(Path(a.out), res)
        print(f"  {rec['ppl']:.2f} PPL, KL {rec['kl']:.4f}, units {rec['units']}", flush=True)
        del pruned


def _decode(model, ids, new_tokens):
    import torch

    with torch.no_grad():
        t = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True,
                             pad_token_id=0)
        secs = time.perf_counter() - t
    return secs, out


def stage_speed(a, res):
    import torch
    from transformers import AutoModelForCausalLM

    import hf_streamline  # noqa: F401 - registers StreamlineForCausalLM
    from hf_streamline.loading import bundled_model_dir
    from hf_streamline.sublayers import kv_cache_bytes_per_token

    torch.set_num_threads(a.threads)
    models = {"dense": AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32).eval()}
    for row in ("attn8_cosine", "attn8_kl", "attn8_ppl"):
        folder = (res.get("rows", {}).get(row) or {}).get("folder")
        if folder and Path(folder).exists():
            models[row] = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (1, a.prompt_tokens), generator=g)
    times = {k: [] for k in models}
    for name, m in models.items():  # warm-up
        _decode(m, ids, 8)
    for _ in range(a.repeats):  # interleaved repeats
        for name, m in models.items():
            secs, out = _decode(m, ids, a.new_tokens)
            times[name].append(secs)
    speed = {}
    for name, m in models.items():
        secs, out = _decode(m, ids, a.new_tokens)
        cache = out.past_key_values
        seq = ids.shape[1] + a.new_tokens - 1
        med = statistics.median(times[name])
        spread = (max(times[name]) - min(times[name])) / med
        speed[name] = {"decode_tokens_per_s": a.new_tokens / med, "median_s": med, "spread": spread,
                       "times": times[name], "kv_bytes_per_token": kv_cache_bytes_per_token(cache, seq)}
    for name in speed:
        speed[name]["speedup"] = speed["dense"]["median_s"] / speed[name]["median_s"]
        speed[name]["kv_ratio"] = speed[name]["kv_bytes_per_token"] / speed["dense"]["kv_bytes_per_token"]
    earlier = {k: {**v, "earlier_run": v.get("earlier_run") or (res.get("speed") or {}).get("load")}
               for k, v in ((res.get("speed") or {}).get("rows") or {}).items() if k not in speed}
    speed.update(earlier)  # rows whose folders are gone keep the ratios of the run that measured them (marked)
    res["speed"] = {"rows": speed, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                    "repeats": a.repeats, "threads": a.threads, "load": loadavg()}
    save_results(Path(a.out), res)
    for name, s in speed.items():
        print(name, f"{s['decode_tokens_per_s']:.1f} tok/s x{s['speedup']:.3f} kv {s['kv_bytes_per_token']:.0f} B/token")


def stage_report(a, res):
    rows = res.get("rows", {})
    dense = rows.get("dense", {})
    lines = ["# Sub-block removal and the KL search (SmolLM2-135M-Instruct)", "",
             "Issue 13. Produced by `benchmarks/sublayer.py`; the numbers are ratios measured in one run on this "
             "machine.", "",
             f"- Machine: {res.get('machine', machine())}; threads: {res.get('config', {}).get('threads')}",
             f"- Versions: {json.dumps(res.get('versions', versions()))}",
             "- Commands: " + "; ".join(f"`{c}`" for c in res.get("commands", [])),
             f"- Calibration (choice of units): {res.get('config', {}).get('samples')} x "
             f"{res.get('config', {}).get('seq_len')} tokens of `train/wikipedia_30_articles.txt` (seed 0); KL search "
             f"fitness: mean KL(dense || pruned) per calibration token from the dense top-"
             f"{res.get('config', {}).get('top_k')} logits; evolution: {res.get('config', {}).get('generations')} "
             f"generations x {res.get('config', {}).get('offspring')} offspring, seed 0",
             f"- Perplexity: WikiText-2 test, 1024-token windows, {res.get('config', {}).get('eval_tokens')} tokens. "
             f"KL / top-1: WikiText-2 validation, 512-token windows, {res.get('config', {}).get('kl_tokens')} tokens.",
             "", "| removed | units | params | WikiText-2 PPL | × dense | KL (nats/token) | top-1 agreement | "
                 "choice cost | load |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for row in ROWS:
        r = rows.get(row)
        if not r:
            continue
        cost = "—"
        if "search" in r:
            s = r["search"]
            cost = (f"{s['trials']} trials, {s['layer_evaluations']:,} layer evals, {s['seconds']:.0f} s "
                    f"(greedy {'perplexity' if row.endswith('_ppl') else 'KL'} {s['greedy_fitness']:.4f} → {s['best_fitness']:.4f}, {s['improvements']} "
                    f"improvements in {s['generations']} generations)")
        elif "choose_seconds" in r:
            cost = f"{r['choose_seconds']:.0f} s"
        units = ", ".join(r["units"]) if r["units"] else "—"
        ratio = r["ppl"] / dense["ppl"] if dense else float("nan")
        lines.append(f"| {LABELS[row]} | {units} | {r['params'] / 1e6:.1f} M | {r['ppl']:.2f} | {ratio:.2f} | "
                     f"{r['kl']:.4f} | {r['top1']:.3f} | {cost} | {r['load']} |")
    sp = res.get("speed")
    if sp:
        lines += ["", f"## Greedy decoding ({sp['prompt_tokens']}-token prompt, {sp['new_tokens']} new tokens, batch 1, "
                      f"{sp['threads']} threads, median of {sp['repeats']} interleaved runs; load {sp['load']})", "",
                  "| model | tokens/s | speed-up | spread of runs | KV cache bytes/token | × dense |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, s in sp["rows"].items():
            label = LABELS.get(name, name) + (f" (earlier run, load {s['earlier_run']})" if s.get("earlier_run") else "")
            lines.append(f"| {label} | {s['decode_tokens_per_s']:.1f} | {s['speedup']:.3f}× | "
                         f"{s['spread'] * 100:.1f} % | {s['kv_bytes_per_token']:,.0f} | {s['kv_ratio']:.3f} |")
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    Path(a.md).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.md}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stage", choices=["quality", "speed", "report"], default="report")
    p.add_argument("--rows", default=None, help=f"comma-separated rows of {ROWS}")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--top-k", type=int, default=128)
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--offspring", type=int, default=6)
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--kl-tokens", type=int, default=8192)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="/tmp/hf_streamline_sublayer_bench")
    p.add_argument("--out", default=str(OUT_JSON))
    p.add_argument("--md", default=str(OUT_MD))
    a = p.parse_args()
    res = load_results(Path(a.out))
    if a.stage != "report":
        if a.stage == "quality":
            res["config"] = {k: v for k, v in vars(a).items() if k not in ("stage", "rows", "out", "md", "models")}
        res["machine"], res["versions"] = machine(), versions()
        cmd = "python benchmarks/sublayer.py " + " ".join(sys.argv[1:])
        res.setdefault("commands", [])
        if cmd not in res["commands"]:
            res["commands"].append(cmd)
    {"quality": stage_quality, "speed": stage_speed, "report": stage_report}[a.stage](a, res)
    if a.stage != "report":
        save_results(Path(a.out), res)


if __name__ == "__main__":
    main()
