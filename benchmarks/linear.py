"""Benchmark: training-free linear block replacement (ReplaceMe-style) on SmolLM2-135M-Instruct (30 layers).

Quality, for n = 4, 8, 12 removed layers: WikiText-2 (test) perplexity of
- the lstsq fold on the block chosen by the fit's relative residual (``replace_linear`` defaults), and plain removal
  of that same block;
- the cosine fold (Adam from the lstsq solution) on that block;
- ReplaceMe's own block rule (angular distance): plain removal and lstsq fold of the block it picks;
- ShortGPT: the n layers of lowest block influence removed;
- (``--streamline``) LLM-Streamline: the same block replaced by a trained ``mlp`` / ``decoder_layer`` on the same
  calibration budget.
Performance: the lstsq statistics + fit for every candidate start against one plain no-grad forward over the same
calibration tokens (fresh processes, interleaved), and the peak RSS of the fit with 1x and 4x the samples.

Stages write into one JSON file (``--stage quality --ns 8`` adds n = 8, ``--stage perf``, ``--stage report``), so the
benchmark can run in several pieces under the shared CPU lock:

    flock /tmp/hf_cpu.lock .venv/bin/python benchmarks/linear.py --stage dense
    flock /tmp/hf_cpu.lock .venv/bin/python benchmarks/linear.py --stage quality --ns 4
    ...
    flock /tmp/hf_cpu.lock .venv/bin/python benchmarks/linear.py --stage perf
    .venv/bin/python benchmarks/linear.py --stage report      # writes benchmarks/linear_results.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_common import loadavg, machine

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
CALIB = SHARED / "train" / "wikipedia_30_articles.txt"
WIKITEXT = SHARED / "text" / "wikitext2_test.raw"
OUT_JSON = HERE / "linear_results.json"
OUT_MD = HERE / "linear_results.md"
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "0"}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(a):
    import torch

    torch.set_num_threads(a.threads)
    from hf_streamline import build_calibration, load_model_and_tokenizer
    from hf_streamline.loading import bundled_model_dir

    model, tok = load_model_and_tokenizer(str(bundled_model_dir()), dtype="float32")
    calib = build_calibration(tok, str(CALIB), n_samples=a.samples, seq_len=a.seq_len, seed=0)
    return model, tok, calib


def ppl(model, tok, a) -> float:
    from hf_streamline import evaluate_perplexity

    return evaluate_perplexity(model, tok, str(WIKITEXT), seq_len=a.eval_seq_len, max_tokens=a.eval_tokens,
                               batch_size=a.eval_batch, progress=False)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def stage_dense(a, results):
    model, tok, _ = load(a)
    value, secs = timed(lambda: ppl(model, tok, a))
    results["dense"] = {"ppl": value, "eval_seconds": secs}
    print("dense", value, flush=True)


def _op_summary(plan) -> dict:
    op = plan.operations[0]
    keep = ("layers", "fold_into", "folded", "residual", "lstsq_residual", "removal_residual", "angular", "tokens",
            "heldout_perplexity", "heldout_samples", "reason", "solver", "skip_first_tokens")
    out = {k: op.get(k) for k in keep if k in op}
    if "cosine" in op:
        out["cosine"] = {k: v for k, v in op["cosine"].items() if k != "loss_per_epoch"}
    return out


def stage_quality(a, results):
    from hf_streamline import remove_layers, replace_linear
    from hf_streamline.architecture import layer_parameter_counts
    from hf_streamline.scores import compute_scores
    from hf_streamline.selection import Target, select_least_important

    from hf_streamline import build_calibration

    model, tok, calib = load(a)
    common = dict(skip_first_tokens=a.skip_first_tokens, batch_size=a.batch_size, progress=False)
    bi = None
    want = set(a.rows.split(",")) if a.rows else None
    for n in a.ns:
        rows = results.setdefault("quality", {}).setdefault(str(n), {})
        stage_load = {"rows": a.rows or "all", "before": loadavg()}
        rows.setdefault("loadavg_runs", []).append(stage_load)

        def run(name, fn):
            if want is not None and name not in want and name.split("_")[0] not in want:
                return
            t = time.perf_counter()
            m, info = fn()
            fit = time.perf_counter() - t
            value, secs = timed(lambda mm=m: ppl(mm, tok, a))
            rows[name] = dict(info, ppl=value, fit_seconds=fit, eval_seconds=secs)
            print(n, name, json.dumps(rows[name], default=str), flush=True)
            results_save(a, results)
            del m

        def lstsq():
            m, plan = replace_linear(copy.deepcopy(model), calib, block_size=n, **common)
            return m, _op_summary(plan)

        run("lstsq", lstsq)
        block = rows["lstsq"]["layers"]
        run("removal", lambda: (remove_layers(copy.deepcopy(model), block), {"layers": block}))

        def lstsq_more():  # the same block, 4x the calibration sequences
            big = build_calibration(tok, str(CALIB), n_samples=4 * a.samples, seq_len=a.seq_len, seed=0)
            m, plan = replace_linear(copy.deepcopy(model), big, layers=f"{block[0]}-{block[-1]}", **common)
            return m, dict(_op_summary(plan), samples=4 * a.samples)

        run("lstsq4x", lstsq_more)

        def skip1():  # the same block, the first position of every sequence left out of the fit, folded anyway
            m, plan = replace_linear(copy.deepcopy(model), calib, layers=f"{block[0]}-{block[-1]}",
                                     **dict(common, skip_first_tokens=1), on_no_gain="keep")
            return m, _op_summary(plan)

        if want is not None and "skip1" in want:  # only on request
            run("skip1", skip1)

        def cosine():
            m, plan = replace_linear(copy.deepcopy(model), calib, layers=f"{block[0]}-{block[-1]}", solver="cosine",
                                     cosine_epochs=a.cosine_epochs, cosine_lr=a.cosine_lr, activations="cache",
                                     **common)
            return m, _op_summary(plan)

        run("cosine", cosine)
        if a.angular:
            def angular():
                m, plan = replace_linear(copy.deepcopy(model), calib, block_size=n, select="angular", **common)
                return m, _op_summary(plan)

            run("angular_lstsq", angular)
            ablock = rows["angular_lstsq"]["layers"]
            run("angular_removal", lambda: (remove_layers(copy.deepcopy(model), ablock), {"layers": ablock}))
        if want is None or "block" in want or "block_influence" in want:
            if bi is None:
                bi = compute_scores(model, ["block_influence"], calib, batch_size=a.batch_size, progress=False)[
                    "block_influence"]
            lp = layer_parameter_counts(model)
            total = sum(p.numel() for p in model.parameters())
            chosen = select_least_important(bi, Target(layers=n), lp, total, 0, 0)
            run("block_influence", lambda: (remove_layers(copy.deepcopy(model), chosen), {"layers": list(chosen)}))
        if a.streamline:
            for kind in ("mlp", "decoder_layer"):
                run(f"streamline_{kind}", lambda kind=kind: streamline_run(model, tok, block, kind, a))
        stage_load["after"] = loadavg()
        results_save(a, results)


def streamline_run(model, tok, block, kind, a):
    from hf_streamline.replacement import streamline
    from hf_streamline.training import StreamlineTrainingArguments

    args = StreamlineTrainingArguments(output_dir="/tmp/hf_streamline_linear_bench_train", max_steps=a.streamline_steps,
                                       per_device_train_batch_size=4, learning_rate=1e-3, lr_scheduler_type="cosine",
                                       warmup_steps=5, use_cpu=True, disable_tqdm=True, logging_steps=10_000, seed=0)
    m, plan = streamline(copy.deepcopy(model), tok, block_size=len(block), block_start=block[0], replacement=kind,
                         train_data=str(CALIB), train_seq_len=a.seq_len, max_train_windows=a.samples,
                         training_args=args, activations="cache", progress=False)
    return m, {"layers": block, "train_windows": a.samples, "train_seq_len": a.seq_len, "steps": a.streamline_steps,
               "objective": "mse"}


# ---- performance ----------------------------------------------------------------------------------------------------

def perf_child(a):
    import torch

    from hf_streamline.capture import base_forward_module
    from hf_streamline.replacement.linear import collect_linear_fit

    model, tok, calib = load(a)
    model.eval()
    base = rss_mb()
    out = {"what": a.perf_child, "samples": a.samples, "tokens": calib.num_tokens, "rss_after_load_mb": base}
    with torch.no_grad():
        if a.perf_child == "forward":
            t = time.perf_counter()
            for b in calib.batches(a.batch_size):
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
            out["seconds"] = time.perf_counter() - t
            body = base_forward_module(model)
            t = time.perf_counter()
            for b in calib.batches(a.batch_size):
                body(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
            out["body_seconds"] = time.perf_counter() - t
        else:
            n = a.perf_n
            t = time.perf_counter()
            stats = collect_linear_fit(model, calib.batches(a.batch_size), n, list(range(1, 30 - n + 1)),
                                       skip_first_tokens=a.skip_first_tokens, progress=False)
            out["capture_seconds"] = time.perf_counter() - t
            res = {s: stats.residual(s, stats.solve(s)) for s in stats.starts}
            out["seconds"] = time.perf_counter() - t
            out["candidates"] = len(res)
            out["best_start"] = min(res, key=res.get)
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_above_load_mb"] = out["peak_rss_mb"] - base
    print(json.dumps(out))


def stage_perf(a, results):
    perf = results.setdefault("perf", {})
    perf["loadavg_before"] = loadavg()

    def child(what, samples, env=None):
        cmd = [sys.executable, __file__, "--perf-child", what, "--samples", str(samples), "--seq-len", str(a.seq_len),
               "--batch-size", str(a.batch_size), "--perf-n", str(a.perf_n), "--threads", str(a.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ, **(env or {})))
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["env"] = env or {}
        print("perf", json.dumps(r), flush=True)
        return r

    runs = []
    for _ in range(a.perf_repeats):  # interleaved, so load changes hit both
        runs.append(child("forward", a.samples))
        runs.append(child("fit", a.samples))
    runs.append(child("fit", 4 * a.samples))
    # glibc keeps freed blocks in per-thread arenas, so a longer run's peak RSS also measures allocator warm-up; with
    # these two settings the allocator returns memory and the peak shows what the computation holds
    for mult in (1, 4):
        runs.append(child("fit", mult * a.samples, env=MALLOC_ENV))
    perf["runs"] = runs
    perf["loadavg_after"] = loadavg()
    results_save(a, results)


# ---- report ---------------------------------------------------------------------------------------------------------

def results_load(a) -> dict:
    return json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}


def results_save(a, results):
    from hf_streamline.utils import versions

    results["versions"] = versions()
    results["machine"] = machine()
    Path(a.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


def _fmt(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f}"


def _span(layers):
    layers = list(layers or [])
    if not layers:
        return "—"
    if layers == list(range(layers[0], layers[0] + len(layers))):
        return f"[{layers[0]}, {layers[-1] + 1})"
    return ",".join(str(i) for i in layers)


def stage_report(a, results):
    cfg = results.get("config", {})
    lines = ["# Linear block replacement (ReplaceMe-style fold): SmolLM2-135M-Instruct, 30 layers", ""]
    v = results.get("versions", {})
    lines += [f"Machine: {results.get('machine', '?')}, shared with 3-4 other developers' jobs (the benchmark ran under "
              "the shared CPU lock; times are only comparable with each other).  fp32, CPU, "
              f"{cfg.get('threads', 2)} torch threads.  Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)) + ".",
              ""]
    lines += ["Commands (each under `flock /tmp/hf_cpu.lock`):", "", "    " + "\n    ".join(results.get("commands", [])),
              ""]
    dense = results.get("dense", {})
    lines += [f"- Calibration: {cfg.get('samples')} × {cfg.get('seq_len')} tokens of "
              "`train/wikipedia_30_articles.txt` (contiguous sampler, seed 0); the fits use the first "
              f"{cfg.get('samples', 32) - max(1, cfg.get('samples', 32) // 8)} sequences, the last "
              f"{max(1, cfg.get('samples', 32) // 8)} are the held-out check. `--skip-first-tokens "
              f"{cfg.get('skip_first_tokens')}`.",
              f"- Perplexity: WikiText-2 raw test, the first {cfg.get('eval_tokens'):,} tokens in non-overlapping "
              f"windows of {cfg.get('eval_seq_len')} tokens. Dense: **{_fmt(dense.get('ppl'), 2)}**.",
              "- lstsq: T = (XᵀX)⁻¹XᵀY, float64 statistics, block chosen by the fit's relative residual among every "
              "start s ≥ 1 (`replace_linear` defaults). cosine: Adam from the lstsq solution on the same block, "
              f"{cfg.get('cosine_epochs')} epochs, lr {cfg.get('cosine_lr')}, 1024 tokens per step, disk-cached "
              "activations. angular: ReplaceMe's block rule (angular distance at the last token), lstsq fold.",
              "- block influence: ShortGPT, the n layers of lowest BI on the same calibration, removed.", ""]
    q = results.get("quality", {})
    lines += ["| n | block (residual) | plain removal | lstsq fold | Δ vs removal | cosine fold | Δ vs removal | "
              "angular block | angular removal | angular lstsq fold | block influence removal (layers) |",
              "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for n in sorted(q, key=int):
        r = q[n]
        rem = (r.get("removal") or {}).get("ppl")
        ls = r.get("lstsq") or {}
        co = r.get("cosine") or {}
        an = r.get("angular_lstsq") or {}
        ar = r.get("angular_removal") or {}
        bi = r.get("block_influence") or {}

        def delta(x):
            return "—" if x is None or rem is None else f"{100 * (x / rem - 1):+.1f}%"

        def mark(row):
            value = _fmt(row.get("ppl"))
            return value if row.get("folded", True) else value + " (not folded)"

        lines.append(f"| {n} | {_span(ls.get('layers'))} | {_fmt(rem)} | {mark(ls)} | {delta(ls.get('ppl'))} | "
                     f"{mark(co)} | {delta(co.get('ppl'))} | {_span(an.get('layers'))} | {_fmt(ar.get('ppl'))} | "
                     f"{mark(an)} | {_fmt(bi.get('ppl'))} ({','.join(str(i) for i in bi.get('layers', []))}) |")
    lines.append("")
    lines += ["Fit details (relative residual = ||XT−Y||²/||h_{s+n}||² on the fitted tokens; held-out = perplexity "
              "of the held-out calibration sequences, which decides whether the fold is kept):", "",
              "| n | row | block | relative residual (removal) | held-out PPL removal → fold | fit time (s) |",
              "|---:|---|---|---|---|---:|"]
    for n in sorted(q, key=int):
        for name in ("lstsq", "cosine", "angular_lstsq"):
            r = q[n].get(name)
            if not r:
                continue
            held = r.get("heldout_perplexity") or {}
            lines.append(f"| {n} | {name} | {_span(r.get('layers'))} | {r.get('residual', 0):.4f} "
                         f"({r.get('removal_residual', 0):.4f}) | {_fmt(held.get('removed'))} → "
                         f"{_fmt(held.get('folded'))} | {_fmt(r.get('fit_seconds'))} |")
    lines.append("")
    if any(q[n].get("streamline_mlp") or q[n].get("streamline_decoder_layer") for n in q):
        lines += ["LLM-Streamline on the same block (trained, `mse` objective on cached activations, "
                  f"{cfg.get('samples')} windows × {cfg.get('seq_len')} tokens of the same file, "
                  f"{cfg.get('streamline_steps')} steps, batch 4, lr 1e-3):", "",
                  "| n | block | mlp (trained) | decoder_layer (trained) | lstsq fold | training time mlp / decoder_layer (s) |",
                  "|---:|---|---:|---:|---:|---|"]
        for n in sorted(q, key=int):
            r = q[n]
            m, dl = r.get("streamline_mlp") or {}, r.get("streamline_decoder_layer") or {}
            lines.append(f"| {n} | {_span((r.get('lstsq') or {}).get('layers'))} | {_fmt(m.get('ppl'))} | "
                         f"{_fmt(dl.get('ppl'))} | {_fmt((r.get('lstsq') or {}).get('ppl'))} | "
                         f"{_fmt(m.get('fit_seconds'))} / {_fmt(dl.get('fit_seconds'))} |")
        lines.append("")
    else:
        lines += ["LLM-Streamline (trained `mlp` / `decoder_layer`) rows: not run in this benchmark (see the notes).", ""]
    lines += ["Load average (`/proc/loadavg`) before / after each stage:", ""]
    for n in sorted(q, key=int):
        runs = ([{"rows": "all", "before": q[n]["loadavg_before"], "after": q[n].get("loadavg_after")}]
                if q[n].get("loadavg_before") else []) + q[n].get("loadavg_runs", [])
        for r in runs:
            lines.append(f"- quality n={n} (rows: {r['rows']}): {r['before']} / {r.get('after')}")
    perf = results.get("perf") or {}
    if perf:
        lines.append(f"- perf: {perf.get('loadavg_before')} / {perf.get('loadavg_after')}")
    lines.append("")
    if perf:
        fw = [r for r in perf["runs"] if r["what"] == "forward"]
        plain = [r for r in perf["runs"] if not r.get("env")]  # the ratios pair runs of the same environment
        fit1 = [r for r in plain if r["what"] == "fit" and r["samples"] == cfg.get("samples")]
        fit4 = [r for r in plain if r["what"] == "fit" and r["samples"] == 4 * cfg.get("samples", 0)]
        best = lambda rs, k: min(r[k] for r in rs) if rs else None  # noqa: E731
        f_full, f_body, t_fit = best(fw, "seconds"), best(fw, "body_seconds"), best(fit1, "seconds")
        lines += [f"## Performance: the lstsq fit for every candidate start (n = {cfg.get('perf_n')}, "
                  f"{fit1[0]['candidates'] if fit1 else '?'} candidates s = 1..{30 - cfg.get('perf_n', 8)})", "",
                  f"Calibration {cfg.get('samples')} × {cfg.get('seq_len')} tokens, batch {cfg.get('batch_size')}, "
                  f"each measurement a fresh process, forward and fit interleaved {cfg.get('perf_repeats')} times "
                  "(best of each reported). The fit = one hooked pass accumulating float64 XᵀX, XᵀY for every "
                  "candidate + the Cholesky solve and residual of every candidate.", "",
                  "| what | samples | seconds (best) | ratio to the plain forward (with lm_head) | ratio to the body-only "
                  "forward | peak RSS (MB) | peak above the loaded model (MB) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in perf["runs"]:
            secs = r.get("seconds")
            if r["what"] == "forward":
                lines.append(f"| plain no-grad forward (with lm_head / body only: {r['body_seconds']:.1f} s) | "
                             f"{r['samples']} | {secs:.1f} | 1.00 | — | {r['peak_rss_mb']:.0f} | "
                             f"{r['peak_above_load_mb']:.0f} |")
            else:
                env = r.get("env") or {}
                tag = (" (" + ", ".join(f"{k}={v}" for k, v in env.items()) + "; no forward was measured under it)"
                       if env else "")
                lines.append(f"| lstsq fit, every start{tag} | {r['samples']} | {secs:.1f} | "
                             f"{secs / f_full:.2f}× | {secs / f_body:.2f}× | {r['peak_rss_mb']:.0f} | "
                             f"{r['peak_above_load_mb']:.0f} |" if r["samples"] == cfg.get("samples") else
                             f"| lstsq fit, every start (4× samples){tag} | {r['samples']} | {secs:.1f} | "
                             f"({secs / f_full / 4:.2f}× per 1× tokens) | ({secs / f_body / 4:.2f}×) | "
                             f"{r['peak_rss_mb']:.0f} | {r['peak_above_load_mb']:.0f} |")
        if t_fit and f_full:
            lines += ["", f"Best fit / best forward: **{t_fit / f_full:.2f}×** the plain forward with lm_head, "
                          f"**{t_fit / f_body:.2f}×** the body-only forward (target ≤ 1.3×). Peak RSS above the "
                          f"loaded model: 1× {best(fit1, 'peak_above_load_mb'):.0f} MB, 4× "
                          f"{best(fit4, 'peak_above_load_mb') if fit4 else float('nan'):.0f} MB."]
        lines.append("")
    notes = results.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {x}" for x in notes] + [""]
    Path(a.md).write_text("\n".join(lines))
    print(f"wrote {a.md}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stage", choices=["dense", "quality", "perf", "report"], default="report")
    p.add_argument("--ns", default="4,8,12")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--skip-first-tokens", type=int, default=0)
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--eval-seq-len", type=int, default=1024)
    p.add_argument("--eval-batch", type=int, default=2)
    p.add_argument("--cosine-epochs", type=int, default=10)
    p.add_argument("--cosine-lr", type=float, default=1e-4)
    p.add_argument("--angular", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--streamline", action="store_true")
    p.add_argument("--rows", default=None, help="run only these rows (comma-separated), e.g. lstsq4x,streamline")
    p.add_argument("--streamline-steps", type=int, default=80)
    p.add_argument("--perf-n", type=int, default=8)
    p.add_argument("--perf-repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--perf-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(OUT_JSON))
    p.add_argument("--md", default=str(OUT_MD))
    a = p.parse_args()
    a.ns = [int(x) for x in str(a.ns).split(",") if x]
    if a.perf_child:
        perf_child(a)
        return
    results = results_load(a)
    if a.stage != "report":
        results["config"] = {k: v for k, v in vars(a).items() if k not in ("stage", "ns", "perf_child", "out", "md")}
        cmd = "python benchmarks/linear.py " + " ".join(sys.argv[1:])
        results.setdefault("commands", [])
        if cmd not in results["commands"]:
            results["commands"].append(cmd)
    {"dense": stage_dense, "quality": stage_quality, "perf": stage_perf, "report": stage_report}[a.stage](a, results)
    if a.stage != "report":
        results_save(a, results)


if __name__ == "__main__":
    main()
