"""Outputs never destroy inputs (issue 18, section 2): an output that is, contains or lies inside an input is refused
for every command that writes, with or without --overwrite, and the inputs stay bit-identical; outputs are complete or
absent; what a killed run left behind is cleaned; output folders get the umask's permissions; a recipe whose later
stage fails keeps the earlier stages' result."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from hf_streamline.cli import main


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def model_copy(stories_dir, tmp_path):
    """A private copy of stories260K with a plan beside it (some commands read a plan)."""
    src = tmp_path / "model"
    shutil.copytree(stories_dir, src)
    return src


@pytest.fixture()
def text(data_dir, tmp_path):
    t = tmp_path / "calib.txt"
    t.write_text((data_dir / "text" / "stories260k_samples.txt").read_text())
    return t


def _small(text: Path) -> list[str]:
    return ["--calibration", str(text), "--samples", "4", "--seq-len", "32"]


# one command line per command that writes, each aimed at one of its own inputs; {M} is the model folder, {T} the
# calibration text, {P} a plan file
CASES = {
    "prune-is-model": "prune --model {M} {C} --remove 1 --output {M} --overwrite",
    "prune-inside-model": "prune --model {M} {C} --remove 1 --output {M}/sub",
    "prune-contains-model": "prune --model {M} {C} --remove 1 --output {M}/.. --overwrite",
    "prune-is-eval-text": "prune --model {M} {C} --remove 1 --eval-text {T} --output {T} --overwrite",
    "prune-plot-is-text": "prune --model {M} {C} --remove 1 --plot {T} --output {W}/out",
    "heal-is-model": "heal --model {M} --data {T} --seq-len 16 --max-steps 1 --output {M} --overwrite",
    "heal-is-teacher": "heal --model {M} --teacher {M}2 --data {T} --method distill --seq-len 16 --max-steps 1 --output {M}2 --overwrite",
    "evaluate-is-model": "evaluate --model {M} --ppl {T} --output {M} --overwrite",
    "evaluate-is-baseline": "evaluate --model {W}/other --baseline {M} --output {M}/report",
    "replace-is-model": "replace --model {M} {C} --block-size 2 --replacement none --output {M} --overwrite",
    "merge-is-model": "merge --model {M} {C} --remove 1 --output {M} --overwrite",
    "apply-is-model": "apply {P} --model {M} --output {M} --overwrite",
    "export-is-model": "export {M} --format quanto-int8 --output {M} --overwrite",
    "score-is-text": "score --model {M} {C} --output {T}",
    "similarity-is-text": "similarity --model {M} {C} --output {T}",
    "mergekit-is-plan": "mergekit {P} --output {P}",
    "compare-healing-is-model": "compare-healing --model {M} --data {T} --budget-tokens 64 --methods partial:0 --output {M} --overwrite",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_aimed_at_an_input_is_refused_and_the_input_is_untouched(case, model_copy, text, tmp_path, capsys):
    from hf_streamline.plan import StreamlinePlan

    m2 = tmp_path / "model2"
    shutil.copytree(model_copy, m2)
    (tmp_path / "other").mkdir()
    plan = tmp_path / "plan.json"
    plan.write_text(StreamlinePlan(base_model="stories", num_layers_before=5, removed_layers=[2],
                                   operations=[{"type": "remove", "layers": [2]}]).to_json())
    argv = CASES[case].format(M=model_copy, T=text, P=plan, W=tmp_path, C=" ".join(_small(text))).split()
    before = {p: _digest(p) for p in (model_copy, m2)}
    texts = {p: p.read_bytes() for p in (text, plan)}
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hf-streamline {argv[0]}: error: --"), err
    assert "destroy" in err[0] and "choose an output outside every input" in err[0]
    assert {p: _digest(p) for p in (model_copy, m2)} == before
    assert {p: p.read_bytes() for p in (text, plan)} == texts
    assert not (model_copy / "sub").exists() and not (tmp_path / "out").exists()


def test_output_dot_inside_the_model_folder_is_refused(model_copy, text, monkeypatch, capsys):
    before = _digest(model_copy)
    monkeypatch.chdir(model_copy)
    assert main(["prune", "--model", ".", *_small(text), "--remove", "1", "--output", ".", "--overwrite"]) == 2
    assert "is the input --model" in capsys.readouterr().err
    assert _digest(model_copy) == before


def test_recipe_output_aimed_at_its_model_is_refused(model_copy, text, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(model_copy), "calibration": {"source": str(text), "samples": 4,
                                                                                "seq_len": 32},
                                      "method": "remove", "remove": {"remove": 1}, "output": str(model_copy),
                                      "overwrite": True}))
    before = _digest(model_copy)
    assert main(["run", str(recipe)]) == 2
    assert "recipe output" in capsys.readouterr().err
    assert _digest(model_copy) == before


def test_output_that_is_a_file_or_not_writable_is_refused(stories_dir, text, tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["prune", "--model", str(stories_dir), *_small(text), "--remove", "1", "--output", str(a_file),
                 "--overwrite"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    import hf_streamline.utils as utils

    if os.geteuid() == 0:  # root writes anywhere: make the permission check see what a user would
        real = os.access
        monkeypatch.setattr(utils.os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    assert main(["prune", "--model", str(stories_dir), *_small(text), "--remove", "1", "--output",
                 str(ro / "out")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert list(ro.iterdir()) == []


def test_a_failing_chart_leaves_no_output_folder(stories_dir, text, tmp_path, monkeypatch, capsys):
    import hf_streamline.plotting as plotting

    def boom(*a, **k):
        raise RuntimeError("no chart today")

    monkeypatch.setattr(plotting, "plot_layer_scores", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        main(["prune", "--model", str(stories_dir), *_small(text), "--remove", "1", "--output", str(out)])
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_stale_staging_and_work_folders_are_removed_by_the_next_run_and_by_clean(stories_dir, text, tmp_path,
                                                                                 monkeypatch, capsys):
    from hf_streamline.utils import OWNER_FILE

    work_root = tmp_path / "tmpdir"
    work_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work_root))
    out = tmp_path / "out"
    dead = _dead_pid()
    sibling = tmp_path / ".out.tmp-killed"
    sibling.mkdir()
    (sibling / OWNER_FILE).write_text(json.dumps({"pid": dead, "output": str(out)}))
    (sibling / "model.safetensors").write_bytes(b"half")
    work = work_root / "hf_streamline_heal_killed"
    work.mkdir()
    (work / OWNER_FILE).write_text(json.dumps({"pid": dead, "output": str(out)}))
    other = work_root / "hf_streamline_heal_other"  # another output's: kept by a run on `out`
    other.mkdir()
    (other / OWNER_FILE).write_text(json.dumps({"pid": dead, "output": str(tmp_path / "elsewhere")}))
    live = tmp_path / ".out.tmp-live"  # a live process's staging folder is never touched
    live.mkdir()
    (live / OWNER_FILE).write_text(json.dumps({"pid": os.getppid(), "output": str(out)}))
    assert main(["prune", "--model", str(stories_dir), *_small(text), "--remove", "1", "--output", str(out)]) == 0
    assert not sibling.exists() and not work.exists() and other.exists() and live.exists()
    assert not (out / OWNER_FILE).exists()
    # `hf-streamline clean` without a folder: every dead run's work folders
    assert main(["clean", "--dry-run"]) == 0
    assert str(other) in capsys.readouterr().out and other.exists()
    assert main(["clean"]) == 0
    assert not other.exists() and live.exists()


def test_output_folders_get_the_umask_permissions(stories_dir, text, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert main(["prune", "--model", str(stories_dir), *_small(text), "--remove", "1", "--output", str(out)]) == 0
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o755
    assert ((out / "scores.png").stat().st_mode & 0o777) == 0o644


def test_interrupt_says_what_was_written(monkeypatch, tmp_path, capsys):
    import hf_streamline.workflows.clean as clean
    from hf_streamline.utils import atomic_output_dir

    def interrupted(args, say):
        with atomic_output_dir(tmp_path / "done") as tmp:
            (tmp / "x").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setattr(clean, "run", interrupted)  # the command table names it; it is looked up when the command runs
    assert main(["clean"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written completely before that" in err[0] and str(tmp_path / "done") in err[0]


def test_recipe_with_a_failing_later_stage_keeps_the_pruned_model(stories_dir, text, tmp_path, capsys):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Once upon a time.")  # far too short for a 64-token training window: heal fails
    recipe = {"model": str(stories_dir), "calibration": {"source": str(text), "samples": 4, "seq_len": 32},
              "method": "remove", "remove": {"remove": 1},
              "heal": {"method": "partial", "last_k": 1, "data": str(tiny), "seq_len": 64, "max_steps": 1},
              "output": str(tmp_path / "out")}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    partial = tmp_path / "out.partial"
    assert "the `heal` stage failed" in err and str(partial) in err and "continue with: hf-streamline heal" in err
    assert not (tmp_path / "out").exists()
    assert (partial / "model.safetensors").exists() and (partial / "streamline_plan.json").exists()
    note = (partial / "streamline_partial.md").read_text()
    assert "Stages done: remove" in note and f"--model {partial}" in note and f"--output {tmp_path / 'out'}" in note
    assert not list(tmp_path.glob(".out.*"))


def test_validate_only_checks_that_named_files_exist(stories_dir, tmp_path, capsys):
    recipe = {"model": str(stories_dir), "calibration": {"source": str(tmp_path / "nope.txt")},
              "method": "remove", "remove": {"remove": 1}, "output": str(tmp_path / "out")}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--validate-only"]) == 2
    assert "`calibration.source` names" in capsys.readouterr().err
    recipe["calibration"]["source"] = "bundled:text/stories260k_samples.txt"
    recipe["evaluate"] = {"task_dir": str(tmp_path / "no-such-dir")}
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--validate-only"]) == 2
    assert "`evaluate.task_dir` names" in capsys.readouterr().err


def test_missing_task_dir_is_an_error_not_the_hub(stories_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["evaluate", "--model", str(stories_dir), "--tasks", "copa", "--task-dir", str(tmp_path / "none"),
                 "--limit", "2", "--no-speed", "--output", str(out)]) == 2
    assert "--task-dir" in capsys.readouterr().err and not out.exists()
