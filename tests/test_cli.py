"""The CLI on the real stories260K model, and every bad input: one clear error, no output folder left behind."""

from __future__ import annotations

import json

import pytest
import torch

from hf_streamline.cli import main
from hf_streamline.plan import PLAN_FILENAME


@pytest.fixture(scope="module")
def common(stories_dir, data_dir):
    return ["--model", str(stories_dir), "--calibration", str(data_dir / "text" / "stories260k_samples.txt"),
            "--samples", "8", "--seq-len", "64"]


def test_prune_writes_plain_checkpoint_plan_and_chart(common, tmp_path, capsys, stories_dir):
    out = tmp_path / "out"
    assert main(["prune", *common, "--metric", "block_influence", "--remove", "1", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "removed layers (1 of 5)" in text and "perplexity on calibration" in text
    plan = json.loads((out / PLAN_FILENAME).read_text())
    assert plan["num_layers_after"] == 4 and len(plan["removed_layers"]) == 1
    assert plan["calibration"]["n_samples"] == 8 and plan["versions"]["transformers"]
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists() and (out / "scores.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 4
    # apply the saved plan to the base model again: the same tensors
    again = tmp_path / "again"
    assert main(["apply", str(out), "--model", str(stories_dir), "--output", str(again)]) == 0
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_score_table_json_and_plot(common, tmp_path, capsys):
    js, png = tmp_path / "s.json", tmp_path / "s.png"
    assert main(["score", *common, "--metric", "block_influence,angular,block_cosine", "--block-size", "2",
                 "--output", str(js), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "best block of 2" in out and out.count("\n") > 5
    data = json.loads(js.read_text())
    assert set(data["scores"]) == {"block_influence", "angular", "block_cosine"}
    assert len(data["scores"]["angular"]["per_block"]["2"]) == 4
    assert png.stat().st_size > 5000


def _bert_folder(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    folder = tmp_path / "bert"
    BertForMaskedLM(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", ["bert", "remove_all", "remove_none", "ratio", "index", "short", "metric", "exists",
                                  "block_too_big"])
def test_bad_input_is_one_clear_error_and_no_output(case, common, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prune", *common, "--output", str(out)]
    expect = {
        "bert": (["--model", str(_bert_folder(tmp_path)) if case == "bert" else "", "--remove", "1"], "encoder-only"),
        "remove_all": (["--remove", "5"], "at least one must stay"),
        "remove_none": (["--remove", "0"], "remove at least one"),
        "ratio": (["--ratio", "1.5"], "strictly between 0 and 1"),
        "index": (["--layers", "2,9"], "layer index 9 is out of range"),
        "short": (["--samples", "500", "--remove", "1"], r"calibration text too short: 500 samples x 64 tokens need 32000 tokens, found"),
        "metric": (["--metric", "nope", "--remove", "1"], "unknown metric 'nope'"),
        "exists": (["--remove", "1"], "already exists"),
        "block_too_big": (["--remove", "6", "--block"], "at least one must stay"),
    }[case]
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    code = main(args + expect[0])
    err = capsys.readouterr().err
    assert code == 2
    import re

    assert re.search(expect[1], err), err
    assert err.count("error:") == 1
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
