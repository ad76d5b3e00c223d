"""StreamlineTrainer under ``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs (DDP over
gloo, accelerate's MULTI_CPU; ``accelerate launch --cpu`` would start a single process): both objectives train the
same parameters as one process with the same global batch, every rank ends with identical weights, and only the main
process writes checkpoints (which hold only the trained parameters)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_streamline.training import CHECKPOINT_MANIFEST_NAME, TRAINED_WEIGHTS_NAME

SCRIPT = Path(__file__).resolve().parent / "ddp_train_script.py"
STEPS = 3  # 4 items, global batch 4: every step sees all items whatever the sampler order, so runs are comparable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate() -> str:
    exe = Path(sys.executable).with_name("accelerate")
    if not exe.exists():
        exe = shutil.which("accelerate")
    if not exe:
        pytest.fail("the accelerate CLI is not installed (accelerate is a dependency)")
    return str(exe)


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # a run takes ~15 s; a hang fails in 5 min
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _ranks(folder: Path) -> list[dict]:
    return [json.loads((folder / f"rank{i}.json").read_text()) for i in range(2) if (folder / f"rank{i}.json").exists()]


@pytest.mark.parametrize("objective", ["mse", "lm"])
def test_two_process_ddp_matches_one_process(tmp_path, objective):
    ddp, ref = tmp_path / "ddp", tmp_path / "ref"
    _run([_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_port", str(_free_port()),
          str(SCRIPT), str(ddp), "--objective", objective, "--batch-size", "2", "--max-steps", str(STEPS),
          "--save-steps", str(STEPS)])
    _run([sys.executable, str(SCRIPT), str(ref), "--objective", objective, "--batch-size", "4", "--max-steps", str(STEPS)])

    ranks = _ranks(ddp)
    assert [r["process_index"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["global_step"] == STEPS for r in ranks)
    assert all("MULTI_CPU" in r["distributed_type"] for r in ranks)
    (one,) = _ranks(ref)
    assert one["world_size"] == 1
    # DDP keeps the ranks in sync, and averaging two per-rank means of 2 items = the mean over 4 items
    names = sorted(one["checksum"])
    r0, r1, single = (torch.load(p, weights_only=True) for p in (ddp / "rank0.pt", ddp / "rank1.pt", ref / "rank0.pt"))
    assert sorted(r0["after"]) == names
    moved = 0.0
    for name in names:
        assert torch.equal(r0["before"][name], single["before"][name])
        assert torch.equal(r0["after"][name], r1["after"][name]), name  # DDP keeps the ranks identical
        # the update equals the one-process update: gradients are averaged (not summed) over the ranks
        d_ddp = r0["after"][name] - r0["before"][name]
        d_one = single["after"][name] - single["before"][name]
        assert torch.allclose(d_ddp, d_one, rtol=1e-3, atol=1e-7), (name, float((d_ddp - d_one).abs().max()))
        moved = max(moved, float(d_one.abs().max()))
    assert moved > 1e-5  # training changed the parameters, so the comparison means something

    # only the main process saved, and only the trained parameters
    for folder in (ddp / "final", ddp / "trainer" / f"checkpoint-{STEPS}"):
        saved = load_file(str(folder / TRAINED_WEIGHTS_NAME))
        assert sorted(saved) == names
        assert (folder / CHECKPOINT_MANIFEST_NAME).exists()
        assert not any(f.startswith("model") for f in os.listdir(folder))


def test_cli_replace_under_accelerate_launch(stories_dir, tmp_path):
    """`accelerate launch -m hf_streamline.cli replace`: two processes train with cached activations (one shard folder
    each), the main process alone writes the output folder and prints each line once."""
    from hf_streamline.data import bundled_path
    from transformers import AutoModelForCausalLM

    text = str(bundled_path("text/stories260k_samples.txt"))
    out, cache = tmp_path / "replaced", tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_port", str(_free_port()),
         "-m", "hf_streamline.cli", "replace", "--model", str(stories_dir), "--calibration", text, "--samples", "4",
         "--seq-len", "64", "--train-data", text, "--train-seq-len", "64", "--max-train-windows", "16",
         "--block-size", "2", "--replacement", "mlp", "--max-steps", "4", "--batch-size", "2", "--device", "cpu",
         "--activations", "cache", "--cache-dir", str(cache), "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("chosen block: layers") == 1 and proc.stdout.count("saved a StreamlineForCausalLM") == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders left
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "StreamlineForCausalLM" and model.config.text_config.num_hidden_layers == 4
    import json as _json

    healing = _json.loads((out / "streamline_plan.json").read_text())["healing"][0]
    assert healing["global_step"] == 4 and healing["activations"] == "cache"


@pytest.mark.parametrize("finished", [True, False])
def test_end_distributed_meets_at_a_barrier_only_when_every_rank_finished(monkeypatch, finished):
    """The CLI's teardown: after a finished run the ranks meet at a barrier first (a gloo worker may still be freeing the
    last collective's tensors, and tearing the group down under it deadlocks the exit); after an error there is no
    barrier (the other ranks may be in another collective, and waiting for them would hang the failed run)."""
    import torch.distributed as dist

    from hf_streamline.utils import end_distributed, is_distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    met = []
    real = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (met.append(1), real(*a, **k))[1])
    try:
        assert is_distributed()
        end_distributed(synchronize=finished)
    finally:
        if dist.is_initialized():  # the assertion below fails, but not with a group left for the next test
            dist.destroy_process_group()
    assert met == ([1] if finished else [])
    assert not is_distributed()
    end_distributed()  # a no-op without a group
