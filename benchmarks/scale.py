"""Beyond one machine's memory: peak RSS and wall time of calibration passes with and without ``--sequential``.

Part 1 (SmolLM2-135M-Instruct, the bundled model): ``score`` (block influence, the hooked similarity pass),
``similarity`` (linear CKA) and ``replace --replacement linear`` (the ReplaceMe fit, fold and save), each once
whole-model and once ``--sequential``, in fresh processes; the outputs are compared (scores and similarity JSON
equal, written weights bit-identical).

Part 2 (a synthetic model with Llama-3-8B-sized layers, few of them, random bfloat16 weights saved as 2 GB shards):
``score`` whole-model, ``--sequential`` and ``--max-memory`` far below its size; peak RSS against the model's size.

Peak RSS is the process's VmHWM (``/proc/self/status``), read in the same process at the end of the command; the
"imports" row is a process that only imports the CLI, torch and transformers -- what no pass can go below.

Usage: python benchmarks/scale.py [--part 1|2|all] [--layers 4]
Writes benchmarks/scale_results.json and benchmarks/scale_results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import loadavg, machine, versions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
CALIB = SHARED / "train" / "wikipedia_30_articles.txt"
OUT_JSON = HERE / "scale_results.json"
OUT_MD = HERE / "scale_results.md"
WORK = Path(os.environ.get("HF_STREAMLINE_BENCH_WORK", tempfile.gettempdir())) / "hf_streamline_scale"

RUNNER = """
import json, sys, time
t0 = time.perf_counter()
from hf_streamline.cli import main
argv = json.loads(sys.argv[1])
rc = main(argv) if argv else 0
hwm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print("@@" + json.dumps({"rc": rc, "peak_rss": hwm, "wall_s": time.perf_counter() - t0}))
"""


def run(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(argv)], capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("@@")]
    if out.returncode != 0 or not line:
        raise SystemExit(f"{argv} failed:\n{out.stderr[-3000:]}")
    rec = json.loads(line[-1][2:])
    if rec["rc"] != 0:
        raise SystemExit(f"{argv} returned {rec['rc']}:\n{out.stderr[-3000:]}")
    return rec


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    fa, fb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def same_weights_sharded(a: Path, b: Path) -> bool:
    """Bit-identical tensors in two (possibly sharded) safetensors folders, one tensor at a time."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    ia, ib = index(a), index(b)
    if ia.keys() != ib.keys():
        return False
    for k in ia:
        with safe_open(str(ia[k]), framework="pt") as ha, safe_open(str(ib[k]), framework="pt") as hb:
            if not torch.equal(ha.get_tensor(k), hb.get_tensor(k)):
                return False
    return True


def part1(results: dict) -> None:
    from hf_streamline.loading import bundled_model_dir

    model = str(bundled_model_dir())
    calib = ["--calibration", str(CALIB), "--samples", "32", "--seq-len", "256", "--batch-size", "8"]
    work = WORK / "part1"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cases = {
        "score": lambda out: ["score", "--model", model, *calib, "--metric", "block_influence", "--output", str(out)],
        "similarity": lambda out: ["similarity", "--model", model, *calib, "--output", str(out)],
        "replace linear": lambda out: ["replace", "--replacement", "linear", "--block-size", "8", "--model", model,
                                       *calib, "--output", str(out)],
    }
    rows = {"imports": run([])}
    for name, argv in cases.items():
        outs = {}
        for mode in ("no-sequential", "sequential"):
            out = work / f"{name.replace(' ', '_')}_{mode}" if name == "replace linear" else \
                work / f"{name}_{mode}.json"
            rows[f"{name} ({mode})"] = run(argv(out) + [f"--{mode}"])
            outs[mode] = out
            print(name, mode, rows[f"{name} ({mode})"], flush=True)
        if name == "replace linear":
            same = same_weights(outs["no-sequential"], outs["sequential"])
        else:
            a, b = (json.loads(outs[m].read_text()) for m in ("no-sequential", "sequential"))
            a.pop("versions", None), b.pop("versions", None)
            same = a == b
        rows[f"{name} (sequential)"]["same_result"] = same
    results["part1"] = {"model": "SmolLM2-135M-Instruct (bundled, float32)", "rows": rows,
                        "calibration": "32 x 256 tokens, batch 8", "load": loadavg()}


def make_synthetic(folder: Path, layers: int) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    if (folder / "config.json").exists():
        return int(json.loads((folder / "size.json").read_text())["bytes"])
    cfg = AutoConfig.for_model("llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                               num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                               max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False,
                               dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="2GB")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    # a byte-level word tokenizer over the calibration text is enough for a random model
    tok = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(256)} | {"[UNK]": 256}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[UNK]",
                            eos_token="[UNK]").save_pretrained(tmp)
    (tmp / "size.json").write_text(json.dumps({"bytes": size}))
    tmp.rename(folder)
    return size


def part2(results: dict, layers: int) -> None:
    folder = WORK / f"synthetic_8b_layers_x{layers}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    size = make_synthetic(folder, layers)
    print(f"synthetic model: {size / 2**30:.2f} GiB ({time.perf_counter() - t:.0f} s)", flush=True)
    calib = ["--calibration", str(CALIB), "--samples", "4", "--seq-len", "128", "--batch-size", "2"]
    base = ["score", "--model", str(folder), "--dtype", "bfloat16", *calib, "--metric", "block_influence"]
    rows = {"imports": run([])}
    outs = {}
    for name, extra in (("whole model", ["--no-sequential"]), ("--sequential", ["--sequential"]),
                        ("--max-memory 2GiB", ["--max-memory", "2GiB"])):
        out = WORK / f"synthetic_{name.strip('-').split()[0]}.json"
        rows[name] = run(base + extra + ["--output", str(out)])
        outs[name] = json.loads(out.read_text())["scores"]["block_influence"]["per_layer"]
        print(name, rows[name], flush=True)
    ref = outs["whole model"]
    for name in outs:
        rows[name]["max_abs_diff"] = max(abs(a - b) for a, b in zip(outs[name], ref))
    # the other two passes of the table, whole vs --sequential
    for cmd, argv in (("similarity", ["similarity", "--model", str(folder), "--dtype", "bfloat16", *calib]),
                      ("replace linear", ["replace", "--replacement", "linear", "--block-size", "1", "--model",
                                          str(folder), "--dtype", "bfloat16", *calib, "--overwrite"])):
        for mode in ("no-sequential", "sequential"):
            out = WORK / (f"synthetic_{cmd.replace(' ', '_')}_{mode}" + (".json" if cmd == "similarity" else ""))
            rows[f"{cmd} ({mode})"] = run(argv + ["--output", str(out), f"--{mode}"])
            print(cmd, mode, rows[f"{cmd} ({mode})"], flush=True)
        a, b = (WORK / (f"synthetic_{cmd.replace(' ', '_')}_{m}" + (".json" if cmd == "similarity" else ""))
                for m in ("no-sequential", "sequential"))
        if cmd == "similarity":
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            ja.pop("versions", None), jb.pop("versions", None)
            rows[f"{cmd} (sequential)"]["same_result"] = ja == jb
        else:
            rows[f"{cmd} (sequential)"]["same_result"] = same_weights_sharded(a, b)
            shutil.rmtree(a, ignore_errors=True), shutil.rmtree(b, ignore_errors=True)
    results["part2"] = {"model": f"Llama config, hidden 4096, MLP 14336, 32/8 heads, vocab 128256 (untied), {layers} "
                                 "layers, random bfloat16 weights in 2 GB shards", "bytes": size, "rows": rows,
                        "calibration": "4 x 128 tokens, batch 2, --dtype bfloat16", "load": loadavg()}


def fmt_mb(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def report(results: dict) -> None:
    lines = ["# Scale: calibration passes layer by layer (`--sequential`)", "",
             f"Machine: {results.get('machine')}. Versions: "
             + ", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items()) + ".", "",
             "Command: `python benchmarks/scale.py --part all`. Every row is a fresh process running one "
             "`hf-streamline` command in-process; peak RSS = VmHWM at its end (imports included).", ""]
    p1 = results.get("part1")
    if p1:
        rows = p1["rows"]
        imp = rows["imports"]["peak_rss"]
        lines += ["## SmolLM2-135M-Instruct", "", f"{p1['model']}, calibration {p1['calibration']}; load average "
                  f"at the end: `{p1['load']}`.", "",
                  "| command | whole: peak RSS | sequential: peak RSS | ratio | above imports: whole → sequential "
                  "(ratio) | wall whole → sequential | same result |", "|---|---|---|---|---|---|---|"]
        for name in ("score", "similarity", "replace linear"):
            w, s = rows[f"{name} (no-sequential)"], rows[f"{name} (sequential)"]
            aw, as_ = w["peak_rss"] - imp, s["peak_rss"] - imp
            lines.append(f"| `{name}` | {fmt_mb(w['peak_rss'])} | {fmt_mb(s['peak_rss'])} | "
                         f"{s['peak_rss'] / w['peak_rss']:.0%} | {fmt_mb(aw)} → {fmt_mb(as_)} ({as_ / aw:.0%}) | "
                         f"{w['wall_s']:.1f} s → {s['wall_s']:.1f} s ({s['wall_s'] / w['wall_s']:.2f}×) | "
                         f"{'yes' if s.get('same_result') else 'NO'} |")
        lines += ["", f"Imports alone (python, torch, transformers, the CLI): {fmt_mb(imp)}.", ""]
    p2 = results.get("part2")
    if p2:
        rows = p2["rows"]
        imp = rows["imports"]["peak_rss"]
        lines += ["## A synthetic model with 8B-sized layers", "", f"{p2['model']}: **{fmt_mb(p2['bytes'])}** of "
                  f"weights; calibration {p2['calibration']}; load average at the end: `{p2['load']}`.", "",
                  "| run | peak RSS | vs whole-model run | peak RSS / model size | above imports / model size | wall "
                  "| block influence: max abs difference from the whole-model run |", "|---|---|---|---|---|---|---|"]
        for name in ("whole model", "--sequential", "--max-memory 2GiB"):
            r = rows[name]
            lines.append(f"| `score {name}` | {fmt_mb(r['peak_rss'])} | "
                         f"{r['peak_rss'] / rows['whole model']['peak_rss']:.0%} | {r['peak_rss'] / p2['bytes']:.0%} | "
                         f"{(r['peak_rss'] - imp) / p2['bytes']:.0%} | {r['wall_s']:.0f} s | {r['max_abs_diff']:.1e} |")
        extra = [c for c in ("similarity", "replace linear") if f"{c} (sequential)" in rows]
        if extra:
            lines += ["", "| command | whole: peak RSS | sequential: peak RSS | ratio | sequential / model size | wall whole "
                      "→ sequential | same result |", "|---|---|---|---|---|---|---|"]
            for c in extra:
                w, q = rows[f"{c} (no-sequential)"], rows[f"{c} (sequential)"]
                lines.append(f"| `{c}` | {fmt_mb(w['peak_rss'])} | {fmt_mb(q['peak_rss'])} | "
                             f"{q['peak_rss'] / w['peak_rss']:.0%} | {q['peak_rss'] / p2['bytes']:.0%} | "
                             f"{w['wall_s']:.0f} s → {q['wall_s']:.0f} s | {'yes' if q.get('same_result') else 'NO'} |")
        lines += ["", f"Imports alone: {fmt_mb(imp)}.", ""]
    lines += results.get("notes", [])
    OUT_MD.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("1", "2", "all"), default="all")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    results = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {}
    if not a.report_only:
        results.update(machine=machine(), versions=versions())
        if a.part in ("1", "all"):
            part1(results)
        if a.part in ("2", "all"):
            part2(results, a.layers)
        OUT_JSON.write_text(json.dumps(results, indent=1) + "\n")
    report(results)
    print(f"wrote {OUT_MD}")


if __name__ == "__main__":
    main()
