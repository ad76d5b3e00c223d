"""``accelerate launch`` (two gloo processes on CPU, DDP) of ``hf-streamline heal`` and ``score``: the same weights
(scores) as one process with the same global batch (calibration), one report and one output (the main process
writes), token budget and count global."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_trainer_accelerate import _accelerate, _free_port

STEPS = 3  # 4 windows, global batch 4: every step sees all of them whatever the sampler order


def _launch_two(*argv: str) -> subprocess.CompletedProcess:
    """``hf-streamline ARGV`` under ``accelerate launch`` with two CPU processes (DDP over gloo)."""
    return _run([_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
                  "--main_process_port", str(_free_port()), "-m", "hf_streamline.cli", *argv])


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # a run takes ~15 s; a hang fails in 5 min
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("method", [
    ["--method", "partial", "--last-k", "2"],
    ["--method", "lora", "--lora-dropout", "0", "--merge"],
    ["--method", "distill", "--teacher", "TEACHER", "--kd-top-k", "8", "--last-k", "2", "--learning-rate", "1e-3"],
    ["--method", "qlora", "--lora-dropout", "0"],
], ids=["partial", "lora", "distill-topk-cache", "qlora"])
def test_two_process_heal_equals_one_process(method, stories_dir, data_dir, tmp_path):
    text = str(data_dir / "text" / "stories260k_samples.txt")
    method = [str(stories_dir) if m == "TEACHER" else m for m in method]
    common = ["heal", "--model", str(stories_dir), "--data", text, *method, "--seq-len", "64", "--eval-size", "0",
              "--max-examples", "4"]
    two = _launch_two(*common, "--budget-tokens", str(STEPS * 4 * 64), "--batch-size", "2",
                      "--output", str(tmp_path / "ddp"))
    _run([sys.executable, "-m", "hf_streamline.cli", *common, "--max-steps", str(STEPS), "--batch-size", "4",
           "--output", str(tmp_path / "one")])
    # one report: the budget is global (3 steps of 2 processes x 2 windows x 64 tokens) and so is the count
    assert two.stdout.count("saved a ") == 1
    assert f"on {STEPS * 4 * 64:,} tokens in {STEPS} steps" in two.stdout
    adapter = "qlora" in method  # an adapter (not merged): compare the adapter weights
    name = "adapter_model.safetensors" if adapter else "model.safetensors"
    a, b = load_file(tmp_path / "ddp" / name), load_file(tmp_path / "one" / name)
    assert a.keys() == b.keys()
    if adapter:
        moved = max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k)  # B starts at zero
    else:
        base = load_file(stories_dir / "model.safetensors")
        moved = max(float((b[k] - base[k]).abs().max()) for k in b if k in base)
    assert moved > 1e-4  # healing changed the weights, so the comparison means something
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("ddp", "one")]
    assert not leftovers, leftovers


def test_two_process_scoring_equals_one_process(stories_dir, data_dir, tmp_path):
    """`accelerate launch` of `score`: each process scores every other calibration batch, the float64 sums are
    all-reduced, and the scores equal one process's; one output, written by the main process."""
    import json

    text = str(data_dir / "text" / "stories260k_samples.txt")
    common = ["score", "--model", str(stories_dir), "--calibration", text, "--samples", "12", "--seq-len", "64",
              "--batch-size", "2", "--metric", "block_influence,angular,block_cosine"]
    two = _launch_two(*common, "--output", str(tmp_path / "two.json"))
    _run([sys.executable, "-m", "hf_streamline.cli", *common, "--output", str(tmp_path / "one.json")])
    assert two.stdout.count("scores written to") == 1
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("two.json", "one.json"))
    assert a["processes"] == 2 and b["processes"] == 1
    for metric, rec in b["scores"].items():
        other = a["scores"][metric]
        if rec["per_layer"] is not None:
            assert other["per_layer"] == pytest.approx(rec["per_layer"], abs=1e-9)
        for n, vals in rec["per_block"].items():
            assert other["per_block"][n] == pytest.approx(vals, abs=1e-9)


def test_two_process_evaluation_equals_one_process(stories_dir, tmp_path):
    """`accelerate launch` of `evaluate`: each process scores every other item, the results are gathered, the report
    (written once, by the main process) has the same accuracies as one process's."""
    import json

    common = ["evaluate", "--model", str(stories_dir), "--tasks", "arc_easy,copa", "--task-dir", "bundled:eval",
              "--limit", "30", "--no-speed", "--generate", "0"]
    two = _launch_two(*common, "--output", str(tmp_path / "two"))
    _run([sys.executable, "-m", "hf_streamline.cli", *common, "--output", str(tmp_path / "one")])
    assert two.stdout.count("wrote ") == 1
    a, b = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("two", "one"))
    assert a["tasks"] == b["tasks"] and b["tasks"]["copa"]["pruned"]["n"] == 30
