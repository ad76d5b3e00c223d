"""How long the command line takes to answer before any work (issue 15: ``hf-streamline --help`` and
``run --validate-only`` in under 1.5 s), each command in a fresh process, as a user types it.

Usage: python benchmarks/cli_startup.py [--repeats 7]   -> benchmarks/cli_startup_results.md
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import loadavg, machine, versions

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("hf-streamline", path=str(Path(sys.executable).parent)) or "hf-streamline"
CASES = [  # (what, argv, target in s or None)
    ("`hf-streamline --help`", [SCRIPT, "--help"], 1.5),
    ("`hf-streamline --version`", [SCRIPT, "--version"], None),
    ("`hf-streamline prune --help` (its full parser)", [SCRIPT, "prune", "--help"], None),
    ("`hf-streamline heal --help` (its full parser)", [SCRIPT, "heal", "--help"], None),
    ("`hf-streamline export --help` (its full parser, the exporters' descriptions)", [SCRIPT, "export", "--help"], None),
    ("`hf-streamline run examples/recommended_25.yaml --validate-only`",
     [SCRIPT, "run", str(ROOT / "examples" / "recommended_25.yaml"), "--validate-only"], 1.5),
    ("reference: `python -c 'import torch'`", [sys.executable, "-c", "import torch"], None),
    ("reference: `python -c 'import transformers'`", [sys.executable, "-c", "import transformers"], None),
]


def wall(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    for _, argv, _ in CASES:  # warm the page cache once, so that every case reads its files from memory
        wall(argv)
    load_before = loadavg()
    times: dict[str, list[float]] = {what: [] for what, _, _ in CASES}
    for _ in range(a.repeats):  # interleaved: a change of load hits every case alike
        for what, argv, _ in CASES:
            times[what].append(wall(argv))
    load_after = loadavg()
    v = versions()
    lines = ["# Command-line start-up", "",
             f"Script: `benchmarks/cli_startup.py --repeats {a.repeats}`: each command line in a fresh process, "
             f"{a.repeats} interleaved runs after one warm-up run each, wall time. Machine: {machine()}; "
             f"{', '.join(f'{k} {x}' for k, x in v.items())}; load average before {load_before}, after {load_after}.",
             "", "| command | median (s) | min (s) | target |", "|---|---:|---:|---|"]
    for what, _, target in CASES:
        t = times[what]
        verdict = "" if target is None else (f"< {target} s: " + ("met" if statistics.median(t) < target else
                                                                  "**missed**"))
        lines.append(f"| {what} | {statistics.median(t):.2f} | {min(t):.2f} | {verdict} |")
    lines += ["", "- `hf-streamline --help` builds one stub per command from its line in `cli.COMMANDS`; a command's own "
              "`--help` builds that command's full parser, whose choices come from `hf_streamline.plugins` (plug-in "
              "names without importing the plug-ins) and `hf_streamline.options` (torch-free option values); "
              "`run --validate-only` checks the recipe against those parsers and loads no model. None of them imports "
              "torch, transformers or peft (tests/test_cli_startup.py checks it in fresh processes), `export --help` "
              "included since session 18: it reads each exporter's description from its class body "
              "(`Registry.declared`) instead of importing the exporter.",
              "- Before issue 15's start-up work: `--help` 6–10 s, `run ... --validate-only` about 7 s (every command's "
              "parser was built, importing torch, transformers and peft for the choices)."]
    out = ROOT / "benchmarks" / "cli_startup_results.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
