"""What every benchmark records beside its numbers: the machine, the load average and the library versions.

Benchmarks run as scripts (``python benchmarks/NAME.py``), so this folder is on ``sys.path`` and they import it as
``from bench_common import ...``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

PACKAGES = ("hf-streamline", "torch", "transformers", "peft", "accelerate")


def loadavg() -> str:
    """``/proc/loadavg`` as it reads now (1, 5, 15-minute load, running/total tasks, last pid)."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.release()}"


def versions(packages: tuple[str, ...] = PACKAGES) -> dict:
    import importlib.metadata as md

    out = {}
    for p in packages:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out
