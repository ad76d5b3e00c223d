"""``hf-streamline merge`` and ``hf-streamline similarity`` end to end on stories260K."""

from __future__ import annotations

import json

import pytest
import torch

from hf_streamline.cli import main
from hf_streamline.plan import StreamlinePlan


@pytest.fixture(scope="module")
def calib_file():
    from hf_streamline.data import bundled_path

    return str(bundled_path("train/wikipedia_30_articles.txt"))


def test_merge_cli_target_mode(stories_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "merged"
    rc = main(["merge", "--model", str(stories_dir), "--calibration", calib_file, "--samples", "8", "--seq-len", "64",
               "--remove", "2", "--rule", "top_weights", "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "removed 2 of 5 layers" in text and "layer evaluations" in text and "perplexity" in text
    plan = StreamlinePlan.load(out)
    assert plan.method == "merge" and len(plan.removed_layers) == 2
    assert plan.extra["merge"]["mode"] == "target" and plan.evaluation["perplexity"]["after"] > 0
    assert 4 not in {i for op in plan.operations for i in op["layers"]}
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 3
    # hf-streamline apply replays the plan on the base model: identical weights
    replay = tmp_path / "replayed"
    assert main(["apply", str(out), "--model", str(stories_dir), "--output", str(replay)]) == 0
    again = AutoModelForCausalLM.from_pretrained(replay)
    a, b = reloaded.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_merge_cli_threshold_mode_and_errors(stories_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["merge", "--model", str(stories_dir), "--calibration", calib_file, "--samples", "4", "--seq-len", "32",
                 "--threshold", "0.5", "--rule", "rdsc", "--similarity", "cka", "--no-eval", "--output", str(out)]) == 0
    plan = StreamlinePlan.load(out)
    assert plan.extra["merge"]["threshold"] == 0.5 and plan.metric == "cka"
    assert all(w["score"] > 0.5 for w in plan.extra["merge"]["windows"])
    capsys.readouterr()
    assert main(["merge", "--model", str(stories_dir), "--calibration", calib_file, "--threshold", "1.5",
                 "--output", str(tmp_path / "x")]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert main(["merge", "--model", str(stories_dir), "--calibration", calib_file, "--remove", "4",
                 "--output", str(tmp_path / "y")]) == 2
    assert "at most 3" in capsys.readouterr().err
    assert main(["merge", "--model", str(stories_dir), "--calibration", calib_file, "--remove", "1",
                 "--output", str(out)]) == 2  # existing output folder
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_similarity_cli(stories_dir, calib_file, tmp_path):
    js, png = tmp_path / "sim.json", tmp_path / "sim.png"
    assert main(["similarity", "--model", str(stories_dir), "--calibration", calib_file, "--samples", "4",
                 "--seq-len", "64", "--kind", "cka_linear", "--output", str(js), "--plot", str(png)]) == 0
    d = json.loads(js.read_text())
    assert d["kind"] == "cka_linear" and d["num_layers"] == 5
    assert all(abs(d["matrix"][i][i] - 1) < 1e-9 for i in range(5))
    assert d["details"]["calibration"]["n_samples"] == 4
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["similarity", "--model", str(stories_dir), "--calibration", calib_file, "--samples", "4",
                 "--seq-len", "64", "--kind", "cosine", "--output", str(tmp_path / "c.json")]) == 0


def test_merge_cli_defaults(stories_dir, calib_file, tmp_path, capsys):
    """`merge --remove K` with nothing else: the default criterion (token_cosine, marginal scoring, drop rule)."""
    from hf_streamline.merging import MergeConfig

    out = tmp_path / "default"
    assert main(["merge", "--model", str(stories_dir), "--calibration", calib_file, "--samples", "4", "--seq-len", "32",
                 "--remove", "2", "--no-eval", "--output", str(out)]) == 0
    assert "removed 2 of 5 layers" in capsys.readouterr().out
    plan = StreamlinePlan.load(out)
    info, d = plan.extra["merge"], MergeConfig()
    assert (info["rule"], info["similarity"], info["scoring"]) == (d.rule, d.similarity, d.scoring)
    assert info["similarity_options"]["skip_first_tokens"] == 1 and len(plan.removed_layers) == 2
    out2 = tmp_path / "kl"
    assert main(["merge", "--model", str(stories_dir), "--calibration", calib_file, "--samples", "4", "--seq-len", "32",
                 "--remove", "1", "--similarity", "logits_kl", "--scoring", "cumulative", "--kl-topk", "0",
                 "--skip-first-tokens", "2", "--rule", "top_weights", "--no-eval", "--output", str(out2)]) == 0
    info = StreamlinePlan.load(out2).extra["merge"]
    assert info["similarity"] == "logits_kl" and info["scoring"] == "cumulative"
    assert info["similarity_options"] == {"skip_first_tokens": 2, "kl_topk": 0}
    capsys.readouterr()
    assert main(["merge", "--model", str(stories_dir), "--calibration", calib_file, "--remove", "1",
                 "--skip-first-tokens", "-1", "--output", str(tmp_path / "z")]) == 2
    assert "skip-first-tokens" in capsys.readouterr().err and not (tmp_path / "z").exists()
