"""Assemble BENCHMARKS.md from the per-topic result files (benchmarks/*_results.md), in pipeline order.

Each topic's script writes its own results file (machine, versions, command, numbers); this only concatenates them.
Usage: python benchmarks/collect.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["quality", "core_scoring", "replacement", "linear", "sublayer", "merging", "healing", "healing_proxy", "recovery", "evaluation", "scale", "export", "demo", "cli_startup"]
INTRO = """# Benchmarks

Every number here comes from a script in `benchmarks/` (command, machine and versions in each section), measured as
ratios within one run. The development machine has 2 CPU cores. The core scoring, replacement, merging and healing
sections were measured while those cores were shared with other jobs (load average 6–9), so their absolute wall
times are inflated and noisy; the evaluation, export and demo sections were measured on an otherwise idle machine
(each states its load average). Ratios measured within one run and quality numbers (perplexity, accuracy,
similarity, sizes) are what to read. Regenerate this file with `python benchmarks/collect.py`.
"""


def main() -> None:
    files = {p.name[: -len("_results.md")]: p for p in (ROOT / "benchmarks").glob("*_results.md")}
    names = [n for n in ORDER if n in files] + sorted(n for n in files if n not in ORDER)
    parts = [INTRO, "Contents: " + ", ".join(f"[{n}](#{n})" for n in names), ""]
    for name in names:
        text = files[name].read_text(encoding="utf-8").strip()
        lines = text.splitlines()
        # demote headings by one level so each topic is a section of this file
        lines = ["#" + ln if ln.startswith("#") else ln for ln in lines]
        # pictures beside the results file: link them from the repository root
        lines = [re.sub(r"(!\[[^\]]*\]\()(?!https?:|/|benchmarks/)([^)]+\))", r"\1benchmarks/\2", ln) for ln in lines]
        parts += [f'<a id="{name}"></a>', "", *lines, "", f"_Source: `benchmarks/{files[name].name}`_", ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"BENCHMARKS.md: {', '.join(names)}")


if __name__ == "__main__":
    main()
