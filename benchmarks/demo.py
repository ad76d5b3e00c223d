"""Wall time of ``hf-streamline demo`` on the bundled SmolLM2-135M-Instruct (the README's first command), CPU.

    .venv/bin/python benchmarks/demo.py [--threads 2] [--output /tmp/hfs-demo-bench]

Runs the demo exactly as a newcomer would (default options) in a fresh process under GNU ``time -v``, records wall
time, peak RSS and the load average around it, and the headline numbers of the report it wrote. Writes
``benchmarks/demo_results.md`` (then run ``python benchmarks/collect.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default="/tmp/hfs-demo-bench", help="demo output folder (replaced)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the demo (default: torch's)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "demo_results.md"))
    args = ap.parse_args()

    exe = Path(sys.executable).with_name("hf-streamline")
    cmd = [str(exe), "demo", "--output", args.output, "--overwrite"]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    timer = shutil.which("time") or "/usr/bin/time"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([timer, "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"demo failed with exit code {proc.returncode}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))

    out = Path(args.output)
    plan = json.loads((out / "streamline_plan.json").read_text())
    sys.path.insert(0, str(ROOT / "src"))
    from hf_streamline.utils import versions

    v = versions()
    lines = [
        "# `hf-streamline demo` wall time (SmolLM2-135M-Instruct, CPU)",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-min)",
        "- versions: " + ", ".join(f"{k} {v[k]}" for k in v),
        f"- command: `python benchmarks/demo.py{' --threads ' + str(args.threads) if args.threads else ''}`, which runs "
        f"`hf-streamline demo --output {args.output} --overwrite` (all demo defaults) under `/usr/bin/time -v`",
        "",
        "| wall time | target | peak RSS |",
        "|---|---|---|",
        f"| {wall / 60:.1f} min ({wall:.0f} s) | < 15 min | {rss_kb / 2**20:.2f} GiB |",
        "",
        "The run includes loading the cached conversion of the bundled model, block-influence scoring (32 x 256 "
        "tokens), removing 25% of the layers, 60 healing steps (partial: the last layer and the lm_head matrix, kept tied to the input embedding), perplexity on 16,384 "
        "WikiText-2 tokens for dense and pruned, 100 items each of arc_easy, piqa and boolq for dense and pruned, "
        "the speed measurement, the PNG charts and the model card.",
        "",
    ]
    removed = None
    for op in plan.get("operations", []):
        if op.get("layers"):
            removed = op["layers"]
            break
    if removed is not None:
        lines.append(f"Removed layers: {removed}.")
        lines.append("")
    lines.append("The demo's own `report/report.md` (figures left out):")
    lines.append("")
    md = (out / "report" / "report.md").read_text(encoding="utf-8")
    md = md.split("## Figures")[0].strip().splitlines()
    lines += ["##" + ln if ln.startswith("#") else ln for ln in md if not ln.startswith("# Evaluation report")]
    Path(args.results).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"demo: {wall:.0f} s, peak RSS {rss_kb / 2**20:.2f} GiB -> {args.results}")


if __name__ == "__main__":
    main()
