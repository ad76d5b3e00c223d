"""Recovery within a CPU budget: the 25% recipe on the bundled SmolLM2-135M-Instruct (issue 12, first cells).

Eight of 30 layers go (a linear map fitted and folded into layer 11 in place of block [12, 20), training-free, or
ShortGPT block influence for comparison); then healing for a *token budget* derived from the tokens/s each healing
method reaches on this machine, so that "30 CPU-minutes" is a number of tokens and runs elsewhere (a GPU) train on the
same tokens. Every stage is a `hf-streamline` command (printed, recorded in the JSON), run in a fresh process:

    flock /tmp/hf_cpu.lock .venv/bin/python benchmarks/recovery.py --stage base      # dense + pruned folders
    flock /tmp/hf_cpu.lock .venv/bin/python benchmarks/recovery.py --stage pilot     # tokens/s of each heal method
    flock /tmp/hf_cpu.lock .venv/bin/python benchmarks/recovery.py --stage full --method NAME --minutes 30
    flock /tmp/hf_cpu.lock .venv/bin/python benchmarks/recovery.py --stage eval --which NAME
    .venv/bin/python benchmarks/recovery.py --stage report                             # recovery_results.md

Evaluation (the same harness for every model, `hf-streamline evaluate` against the dense model): WikiText-2 test
perplexity in 1024-token windows over the first 32,768 tokens, KL(dense || model) and top-1 agreement on 8,192
tokens of that text, and accuracy on the bundled items (300 per task; --tasks). Healing and calibration text are
the bundled C4 documents and Wikipedia articles, disjoint from WikiText-2 test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench_common import loadavg, versions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT_JSON = HERE / "recovery_results.json"
OUT_MD = HERE / "recovery_results.md"
WORK = Path(os.environ.get("HF_STREAMLINE_BENCH_WORK", "/tmp/hf_streamline_recovery"))
CALIB = "bundled:train/wikipedia_30_articles.txt"
HEAL_DATA = "bundled:train/c4_300_docs.jsonl"
WIKI = "bundled:text/wikitext2_test.raw"
HF = [sys.executable, "-m", "hf_streamline.cli"]

# heal methods of the pilot: name -> heal arguments (besides model, data, output, budget)
METHODS = {
    "partial3": ["--method", "partial", "--last-k", "3", "--learning-rate", "1e-4"],
    "kd_partial3": ["--method", "distill", "--distill-subset", "partial", "--last-k", "3", "--kd-top-k", "64",
                    "--learning-rate", "1e-4"],
    "kd_lora": ["--method", "distill", "--distill-subset", "lora", "--kd-top-k", "64", "--learning-rate", "1e-3"],
    "lora": ["--method", "lora", "--learning-rate", "1e-3"],
}
PRUNED = {
    "linear8": lambda: HF + ["replace", "--replacement", "linear", "--block-size", "8", "--calibration", CALIB,
                             "--samples", "64", "--seq-len", "256", "--output", str(WORK / "linear8"), "--overwrite"],
    "bi8": lambda: HF + ["prune", "--metric", "block_influence", "--remove", "8", "--calibration", CALIB,
                         "--samples", "64", "--seq-len", "256", "--output", str(WORK / "bi8"), "--overwrite"],
}


def load() -> dict:
    return json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {}


def save(res: dict) -> None:
    tmp = OUT_JSON.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    tmp.replace(OUT_JSON)


def run(cmd: list[str]) -> tuple[float, str]:
    """Run one command; its wall time and the command as recorded (paths of the work folder shortened)."""
    shown = " ".join(shlex.quote(c) for c in cmd[2:]).replace(str(WORK) + "/", "$WORK/")
    shown = shown.replace("hf_streamline.cli", "hf-streamline", 1)
    print("+", shown, flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1"))
    return time.perf_counter() - t, shown


def healing_record(folder: Path) -> dict:
    plan = json.loads((folder / "streamline_plan.json").read_text())
    return (plan.get("healing") or [{}])[-1] if isinstance(plan.get("healing"), list) else plan.get("healing") or {}


def stage_base(a, res):
    from hf_streamline.loading import bundled_model_dir

    res["dense_dir"] = str(bundled_model_dir())
    for name, cmd in PRUNED.items():
        secs, shown = run(cmd())
        res.setdefault("pruned", {})[name] = {"command": shown, "seconds": secs, "loadavg": loadavg()}
        save(res)


def heal_cmd(src: str, method: str, out: Path, budget_tokens: int, a) -> list[str]:
    cmd = HF + ["heal", "--model", str(WORK / src), "--data", HEAL_DATA, "--seq-len", "256", "--batch-size", "4",
                "--budget-tokens", str(budget_tokens), "--eval-size", "0", "--output", str(out), "--overwrite"]
    cmd += METHODS[method]
    if "--method" in cmd and cmd[cmd.index("--method") + 1] == "distill":
        cmd += ["--teacher", load()["dense_dir"]]
    return cmd


def stage_pilot(a, res):
    """A short run of each method on the same tokens: tokens/s (the teacher pass of the cached KD included)."""
    for method in a.methods.split(","):
        out = WORK / f"pilot_{method}"
        before = loadavg()
        secs, shown = run(heal_cmd(a.src, method, out, a.pilot_tokens, a))
        rec = healing_record(out)
        tokens = rec.get("train_tokens") or a.pilot_tokens
        res.setdefault("pilot", {})[method] = {
            "command": shown, "process_seconds": secs, "tokens": tokens, "record": rec,
            "tokens_per_s": tokens / secs, "loadavg": [before, loadavg()]}
        print(method, f"{tokens / secs:.1f} tokens/s over the whole process", flush=True)
        save(res)


def stage_full(a, res):
    tps = res["pilot"][a.method]["tokens_per_s"]
    budget = a.budget_tokens or int(tps * 60 * a.minutes)
    name = f"{a.src}_{a.method}_{a.minutes:g}min"
    out = WORK / name
    before = loadavg()
    secs, shown = run(heal_cmd(a.src, a.method, out, budget, a))
    res.setdefault("full", {})[name] = {"command": shown, "process_seconds": secs, "budget_tokens": budget,
                                        "budget_note": a.budget_note,
                                        "minutes": a.minutes, "from_tokens_per_s": tps, "record": healing_record(out),
                                        "loadavg": [before, loadavg()], "folder": str(out)}
    save(res)


def stage_eval(a, res):
    which = a.which
    folder = WORK / which
    out = WORK / f"eval_{which}"
    cmd = HF + ["evaluate", "--model", str(folder), "--ppl", f"wikitext2={WIKI}", "--ppl-seq-len", "1024",
                "--ppl-tokens", "32768", "--agreement-tokens", "8192", "--task-dir", "bundled:eval",
                "--limit", str(a.limit), "--sample-seed", "0", "--no-speed", "--no-plots", "--output", str(out), "--overwrite"]
    if a.tasks:
        cmd += ["--tasks", *a.tasks.split(",")]
    if a.extra:
        cmd += ["--model-extra", *[str(WORK / x) for x in a.extra.split(",")]]
    if a.with_dense:
        cmd += ["--baseline", res["dense_dir"]]
    before = loadavg()
    secs, shown = run(cmd)
    report = json.loads((out / "report.json").read_text())
    res.setdefault("eval", {})[which] = {"command": shown, "seconds": secs, "report": report,
                                         "loadavg": [before, loadavg()]}
    save(res)


def mean_acc(report: dict, label: str) -> float:
    vals = []
    for task, by_label in (report.get("tasks") or {}).items():
        m = by_label.get(label) or {}
        v = m.get("acc_norm") if m.get("acc_norm") is not None else m.get("acc")
        if v is not None:
            vals.append(float(v))
    return sum(vals) / len(vals) if vals else float("nan")


def stage_report(a, res):
    lines = ["# Recovery within a CPU budget: SmolLM2-135M-Instruct, 8 of 30 layers removed", ""]
    lines += [f"Machine: {os.cpu_count()} CPU cores, {platform.platform()}; versions: "
              + ", ".join(f"{k} {v}" for k, v in (res.get("versions") or {}).items()) + ".", ""]
    lines += ["Script: `benchmarks/recovery.py` (stages and commands below). Numbers from `hf-streamline evaluate`: "
              "WikiText-2 test PPL in 1024-token windows over 32,768 tokens; KL(dense ‖ model) per token and top-1 "
              "agreement on 8,192 tokens; accuracy on the bundled task items.", ""]
    for sec in ("pruned", "pilot", "full", "eval"):
        for name, r in (res.get(sec) or {}).items():
            cmd = r["command"].replace(str(res.get("dense_dir")), "$DENSE") if res.get("dense_dir") else r["command"]
            lines.append(f"- `{sec}/{name}`: `{cmd}` ({r.get('seconds') or r.get('process_seconds'):.0f} s, "
                         f"load {r['loadavg'] if isinstance(r['loadavg'], str) else ' → '.join(r['loadavg'])})"
                         + (f"; budget: {r['budget_note']}" if r.get("budget_note") else ""))
    lines += ["", "`$WORK` is the work folder (`HF_STREAMLINE_BENCH_WORK`, default `/tmp/hf_streamline_recovery`); "
              "`$DENSE` the bundled SmolLM2-135M-Instruct as `hf-streamline convert` writes it.", ""]
    if res.get("pilot"):
        lines += ["## Healing speed (pilot, same tokens for every method)", "",
                  "The process wall time of a `kd_*` method includes the teacher-cache pass over the *whole* training set "
                  "(167k tokens), a fixed cost that a 16k-token pilot cannot amortise; its training rate is in the notes.",
                  "",
                  "| method | tokens | process wall (s) | tokens/s (whole process) | train loss first → last |",
                  "|---|---:|---:|---:|---|"]
        for m, r in res["pilot"].items():
            curve = [e["loss"] for e in r["record"].get("loss_curve", []) if e.get("loss") is not None]
            first_last = f"{curve[0]:.3f} → {curve[-1]:.3f}" if curve else ""
            lines.append(f"| {m} | {r['tokens']} | {r['process_seconds']:.0f} | {r['tokens_per_s']:.1f} | {first_last} |")
        lines.append("")
    if res.get("eval"):
        lines += ["## Quality", "",
                  "| model | WikiText-2 PPL | × dense | KL(dense ‖ model) | top-1 agreement | mean acc | % of dense acc |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        dense_ppl = dense_acc = None
        for r in res["eval"].values():
            rep = r["report"]
            if "dense" in rep.get("models", {}):
                dense_ppl = rep["perplexity"]["wikitext2"]["dense"]
                dense_acc = mean_acc(rep, "dense")
                lines.append(f"| dense | {dense_ppl:.2f} | 1.00 | 0 | 1 | {dense_acc:.3f} | 100.0 |")
                break
        for name, r in res["eval"].items():
            rep = r["report"]
            for label in rep.get("models", {}):
                if label == "dense":
                    continue
                ppl = rep["perplexity"]["wikitext2"][label]
                acc = mean_acc(rep, label)
                name = label if len(rep["models"]) > 2 or label != "pruned" else name
                pair = next((v for k, v in (rep.get("pairs") or {}).items() if k.startswith(label + "_vs_")), {})
                acc_cells = (f"{acc:.3f} | {100 * acc / dense_acc:.1f}" if acc == acc and dense_acc
                             else "— (not measured) | —")
                lines.append(f"| {name} | {ppl:.2f} | {ppl / dense_ppl if dense_ppl else float('nan'):.2f} | "
                             f"{pair.get('kl', float('nan')):.3f} | {pair.get('top1_agreement', float('nan')):.3f} | "
                             f"{acc_cells} |")
        lines.append("")
        lines.append("Mean accuracy: `acc_norm` where the task defines it, else `acc`, averaged over the tasks.")
        lines.append("")
    lines += [f"- {x}" for x in res.get("notes", [])]
    OUT_MD.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT_MD}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["base", "pilot", "full", "eval", "report"], required=True)
    p.add_argument("--src", default="linear8", choices=list(PRUNED), help="pruned folder to heal")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--method", default="kd_lora", choices=list(METHODS))
    p.add_argument("--pilot-tokens", type=int, default=8192)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--budget-tokens", type=int, default=None,
                   help="full: the token budget (default: pilot tokens/s x minutes; give it when a fixed cost such as "
                        "the teacher-cache pass makes the pilot's rate misleading)")
    p.add_argument("--budget-note", default="", help="full: how the budget was derived (recorded)")
    p.add_argument("--which", default="linear8")
    p.add_argument("--tasks", default="arc_easy,arc_challenge,piqa,boolq,winogrande,openbook_qa,copa,lambada_openai")
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--with-dense", action="store_true")
    p.add_argument("--extra", default="", help="eval: more folders of the work folder, evaluated beside --which")
    a = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    res = load()
    res["versions"] = versions()
    {"base": stage_base, "pilot": stage_pilot, "full": stage_full, "eval": stage_eval, "report": stage_report}[
        a.stage](a, res)
    if a.stage != "report":
        save(res)


if __name__ == "__main__":
    main()
