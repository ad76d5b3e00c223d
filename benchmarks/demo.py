"""Wall time of ``hf-streamline demo`` on the bundled SmolLM2-135M-Instruct (the README's first command), CPU.

    .venv/bin/python benchmarks/demo.py [--threads 2] [--output /tmp/hfs-demo-bench] [--fresh-cache]

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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default="/tmp/hfs-demo-bench", help="demo output folder (replaced)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the demo (default: torch's)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "demo_results.md"))
    ap.add_argument("--fresh-cache", action="store_true",
                    help="run with an empty HF_STREAMLINE_CACHE, so the first run's GGUF conversion is included "
                         "(what a newcomer sees)")
    args = ap.parse_args()

    exe = Path(sys.executable).with_name("hf-streamline")
    cmd = [str(exe), "demo", "--output", args.output, "--overwrite"]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cache = tempfile.TemporaryDirectory(prefix="hfs-demo-cache-") if args.fresh_cache else None
    if cache is not None:
        env["HF_STREAMLINE_CACHE"] = cache.name
    timer = shutil.which("time") or "/usr/bin/time"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([timer, "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    if cache is not None:
        cache.cleanup()
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
        f"`hf-streamline demo --output {args.output} --overwrite` (all demo defaults) under `/usr/bin/time -v`"
        + (", with an empty `HF_STREAMLINE_CACHE` (the GGUF conversion included)" if cache is not None else
           " (the bundled model's conversion already cached)"),
        "",
        "| wall time | target | peak RSS |",
        "|---|---|---|",
        f"| {wall / 60:.1f} min ({wall:.0f} s) | < 15 min | {rss_kb / 2**20:.2f} GiB |",
        "",
        "What the demo said it runs (the recommended recipe, `bundled:recipes/recommended_25.yaml`, scaled down):",
        "",
    ]
    lines += [ln.replace("  - ", "- ", 1) for ln in proc.stdout.splitlines() if ln.startswith("  - ")] + [""]
    lines += [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith("--last-k cut")] + [""]
    removed = plan.get("removed_layers")
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
