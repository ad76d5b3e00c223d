"""The quality benchmark (benchmarks/quality.py) end to end in its smallest configuration, on stories260K: methods
from the registries, one cell per family built by its CLI command, the cheap columns, accuracy, a healed cell, the
report and its plot (issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "quality.py"


def _bench(tmp_path: Path, *args: str) -> str:
    cmd = [sys.executable, str(SCRIPT), "--preset", "smoke", "--results", str(tmp_path / "q"), "--work",
           str(tmp_path / "work"), *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_methods_come_from_the_registries():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import quality
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from hf_streamline.merging.base import MERGE_RULES
    from hf_streamline.replacement.base import KINDS
    from hf_streamline.scores import SCORERS

    names = set(quality.methods())
    assert {f"merge:{r}" for r in MERGE_RULES} <= names
    assert all(any(n.startswith(f"remove:{m}") for n in names) for m in SCORERS)
    assert all(any(n.startswith(f"replace:{k}") for n in names) for k in KINDS)
    # metrics whose paper removes a contiguous block run with --block
    assert "remove:angular:block" in names and "remove:block_cosine:block" in names
    p = quality.preset("smoke")
    assert "--block" in quality.methods()["remove:angular:block"].argv(2, p)
    # a trained replacement module takes the place of k + 1 layers: k layers removed
    argv = quality.methods()["replace:mlp:mse"].argv(3, p)
    assert argv[argv.index("--block-size") + 1] == "4"
    # the seed methods' own recipes are in the grid
    seeds = {m.seed for m in quality.methods().values()}
    assert {"ShortGPT", "SLM", "LLM-Streamline", "Reassessing Layer Pruning"} <= seeds


def test_smallest_grid_end_to_end(tmp_path):
    only = "remove:block_influence,search:kl,merge:drop"
    _bench(tmp_path, "--stage", "build", "--only", only)
    res = json.loads((tmp_path / "q.json").read_text())
    assert set(res["cells"]) == {"remove:block_influence@1", "search:kl@1", "merge:drop@1"}
    for cell in res["cells"].values():
        assert cell["build"]["command"].startswith("hf-streamline ")
        assert cell["build"]["peak_rss_mb"] > 0 and len(cell["removed_layers"]) == 1

    _bench(tmp_path, "--stage", "eval")
    _bench(tmp_path, "--stage", "acc", "--only", "search:kl@1")
    _bench(tmp_path, "--stage", "heal", "--only", "remove:block_influence@1", "--heal", "partial1",
           "--budget-tokens", "256", "--budget-note", "test")
    before = json.loads((tmp_path / "q.json").read_text())["cells"]["search:kl@1"]["acc"]
    _bench(tmp_path, "--stage", "rescore")  # the accuracy columns again, from the reports the acc stage wrote
    after = json.loads((tmp_path / "q.json").read_text())["cells"]["search:kl@1"]["acc"]
    assert after["mean"] == pytest.approx(before["mean"])
    assert {t: v["metric"] for t, v in after["tasks"].items()} == {"copa": "acc", "piqa": "acc_norm"}  # as lm-eval
    _bench(tmp_path, "--stage", "eval")  # only the new healed cell is evaluated
    _bench(tmp_path, "--stage", "report", "--note", "a note")
    res = json.loads((tmp_path / "q.json").read_text())
    dense = res["dense"]["ppl"]["stories"]
    for name, cell in res["cells"].items():
        ev = cell["eval"]
        assert ev["ppl"]["stories"] > dense * 0.9, name  # removing a layer does not make a model better than dense
        assert ev["kl"] > 0 and 0 < ev["top1"] < 1
        assert ev["dense_ppl_same_run"]["stories"] == pytest.approx(dense, rel=1e-6)
    healed = res["cells"]["remove:block_influence@1+partial1"]
    assert healed["base"] == "remove:block_influence@1" and healed["budget"] == 256 and healed["tokens_per_s"] > 0
    assert res["cells"]["search:kl@1"]["acc"]["mean"] is not None and res["dense"]["acc"]["mean"] is not None
    assert set(res["cells"]["search:kl@1"]["acc"]["tasks"]) == {"copa", "piqa"}
    md = (tmp_path / "q.md").read_text()
    assert "## 1 layers removed" in md and "`search:kl@1`" in md and "a note" in md
    # ★: the three best budget-0 cells that are distinct models (at 1 layer removed, several methods pick one layer:
    # a twin's note names the cell that stands for it, with the same layers)
    rows = [line for line in md.split("## 1 layers removed")[1].split("\n\n")[1].splitlines()[2:]
            if "+" not in line.split("`")[1]]
    distinct = [line for line in rows if "the same model as" not in line]
    assert [line for line in rows if line.startswith("| ★ ")] == distinct[:3] and len(distinct) >= 1
    layers = {line.split("`")[1]: line.split(" | ")[1] for line in rows}
    for line in rows:
        if "the same model as `" in line:
            assert layers[line.split("the same model as `")[1].split("`")[0]] == line.split(" | ")[1]
    # the recovery table: the healed cell under its own budget-0 base, with what the recipe trains
    table = md.split("## Recovery at a budget")[1].split("\n\n")[2].splitlines()
    assert table[2].startswith("| `remove:block_influence@1` (1) | none (budget 0) |")
    assert table[3].startswith("| `remove:block_influence@1` (1) | `partial1`")
    assert "lm_head + norm + the last 1 layers, LM loss" in table[3] and "| 256 |" in table[3]
    # the floor under "% of dense": a uniform guess on the same items (copa and piqa: 2 choices each)
    assert "A uniform guess over each item's choices scores 0.500 on the same items" in md
    assert (tmp_path / "q.png").stat().st_size > 10_000


def test_bad_heal_name_is_one_line(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--preset", "smoke", "--results", str(tmp_path / "q"), "--work",
           str(tmp_path / "work"), "--stage", "heal", "--heal", "nope", "--budget-tokens", "10"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "--heal: choose from" in out.stderr
    assert not (tmp_path / "q.json").exists()


def test_cell_patterns_and_tagged_pilots(tmp_path):
    import argparse

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import quality
    finally:
        sys.path.remove(str(SCRIPT.parent))
    b = quality.Bench(argparse.Namespace(preset="smoke", results=str(tmp_path / "q"), work=str(tmp_path / "w")))
    cells = ["remove:block_influence@8", "remove:block_influence@4", "search:kl@8", "search:kl@8+kd_partial3",
             "search:kl@8+kd_partial3~pilot_lr1e-4"]
    assert b.selected(cells, "remove:*") == ["remove:block_influence@8", "remove:block_influence@4"]
    assert b.selected(cells, "*@8,*@8+*") == ["remove:block_influence@8", "search:kl@8", "search:kl@8+kd_partial3"]
    assert b.selected(cells, None) == cells[:4]  # a pilot is a measurement of its own: only named tags select it
    assert b.selected(cells, "*~pilot*") == cells[4:]
    assert b.folder("search:kl@8+kd_partial3~pilot_lr1e-4").name == "search-kl-at-8-heal-kd_partial3-pilot_lr1e-4"


def test_stopping_the_benchmark_stops_the_command_it_runs(tmp_path):
    """SIGTERM to quality.py must not leave its hf-streamline child writing into the cell folder."""
    import signal
    import time

    import psutil

    cmd = [sys.executable, str(SCRIPT), "--preset", "smoke", "--results", str(tmp_path / "q"), "--work",
           str(tmp_path / "work"), "--stage", "build", "--only", "remove:block_influence"]
    bench = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"))
    parent = psutil.Process(bench.pid)
    deadline = time.time() + 60
    children = []
    while not children and time.time() < deadline and bench.poll() is None:
        children = [c for c in parent.children(recursive=True) if "hf_streamline" in " ".join(c.cmdline())]
        time.sleep(0.1)
    assert children, "the benchmark started no hf-streamline command"
    bench.send_signal(signal.SIGTERM)
    assert bench.wait(timeout=30) != 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [c.cmdline() for c in alive]


def test_what_each_healing_recipe_trains_in_words():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from quality import HEALS, _trains
    finally:
        sys.path.remove(str(SCRIPT.parent))

    assert _trains("partial0") == "lm_head + norm, LM loss"
    assert _trains("lora") == "LoRA on every decoder layer, LM loss"
    assert _trains("kd_lora") == "LoRA on every decoder layer, KD from dense (top-64 logits)"
    assert _trains("kd_cut2_frozen_head") == "norm + every layer above the cut and the 2 below it, KD from dense (top-64 logits)"
    assert _trains("kd_cut2_frozen_head_sd") == ("norm + every layer above the cut and the 2 below it, KD from dense "
                                                 "(top-64 logits), on dense's own continuations (224 tokens per prompt)")
    assert all(_trains(h) for h in HEALS)
