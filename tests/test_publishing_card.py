"""Model cards: metadata and body rendered from the plan / evaluation report through the model_cards/ templates."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from hf_streamline.errors import StreamlineError
from hf_streamline.plan import StreamlinePlan
from hf_streamline.publishing import (citations_for_plan, render_model_card, template_dir, write_eval_results,
                                      write_model_card)
from hf_streamline.publishing.card import TEMPLATE_NAME

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pruned(stories_dir, data_dir, tmp_path_factory):
    """stories260K with 2 of 5 layers removed by block influence: (folder, plan)."""
    from hf_streamline import CalibrationConfig, Target, build_calibration, load_model_and_tokenizer, prune, save_pruned

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    text = str(data_dir / "text" / "stories260k_samples.txt")
    calib = build_calibration(tok, text, CalibrationConfig(n_samples=4, seq_len=64))
    model, plan = prune(model, metric="block_influence", target=Target(layers=2), calibration=calib,
                        base_model="karpathy/stories260K", progress=False)
    plan.evaluation["perplexity"] = {"text": text, "before": 3.25, "after": 4.5}
    out = tmp_path_factory.mktemp("card") / "stories-pruned"
    save_pruned(model, tok, plan, out)
    return out, plan


def _report() -> dict:
    return {
        "models": {"dense": {"path": "base", "num_layers": 5, "params": 260_000, "non_embedding_params": 200_000},
                   "pruned": {"path": "pruned", "num_layers": 3, "params": 202_000, "non_embedding_params": 136_000}},
        "perplexity": {"wikitext2_test.raw": {"dense": 28.7, "pruned": 116.8}},
        "tasks": {"arc_easy": {"dense": {"acc": 0.61, "acc_stderr": 0.01, "acc_norm": 0.55, "acc_norm_stderr": 0.01, "n": 2376},
                               "pruned": {"acc": 0.52, "acc_stderr": 0.011, "acc_norm": 0.47, "acc_norm_stderr": 0.011, "n": 2376}},
                  "my_private_task": {"dense": {"acc": 0.4, "n": 10}, "pruned": {"acc": 0.3, "n": 10}}},
        "pairs": {"pruned_vs_dense": {"stability": {"arc_easy": 0.83, "my_private_task": 0.7}}},
        # timed repeats within 2 % of their median: steady enough for a card
        "speed": {"dense": {"prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 40.0,
                            "prefill_s": [0.128, 0.1285, 0.1282], "decode_s": [0.8, 0.805, 0.801]},
                  "pruned": {"prefill_tokens_per_s": 1320.0, "decode_tokens_per_s": 50.0,
                             "prefill_s": [0.097, 0.0972, 0.0975], "decode_s": [0.64, 0.642, 0.641]}},
    }


def test_templates_ship_inside_the_package():
    d = template_dir()
    assert (d / TEMPLATE_NAME).is_file()
    packaged = resources.files("hf_streamline") / "model_cards" / TEMPLATE_NAME
    assert packaged.is_file(), "the template must live inside the package so that the wheel carries it"
    # the repository's model_cards/ is the same folder (a link into the package)
    assert (ROOT / "model_cards" / TEMPLATE_NAME).resolve() == Path(str(packaged)).resolve()


def test_card_metadata_and_body_from_plan(pruned):
    from huggingface_hub import ModelCard

    folder, plan = pruned
    card = render_model_card(folder, repo_id="tester/stories-pruned")
    again = ModelCard(str(card))  # parses back
    data = again.data
    assert data.base_model == "karpathy/stories260K"
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert {"hf-streamline", "layer-pruning", "remove", "block_influence"} <= set(data.tags)
    # license unknown offline -> "other" with a pointer to the base model, and the body says so
    assert data.license == "other" and data.license_link == "https://huggingface.co/karpathy/stories260K"
    s = data.to_dict()["streamline"]
    assert s["removed_layers"] == plan.removed_layers and s["num_layers_after"] == 3
    assert s["operations"] == [{"type": "remove", "layers": plan.removed_layers}]
    text = card.text
    for i in range(5):
        fate = "**removed**" if i in plan.removed_layers else "kept"
        score = plan.scores["block_influence"]["per_layer"][i]
        assert f"| {i} | {fate} |" in text
        assert f"{score:.4g}" in text
    assert 'AutoModelForCausalLM.from_pretrained("tester/stories-pruned")' in text
    assert "trust_remote_code" not in text
    assert "hf-streamline apply streamline_plan.json --model karpathy/stories260K" in text
    assert "--remove 2" in text and "--metric block_influence" in text
    assert "@article{men2024shortgpt" in text  # ShortGPT (block influence)
    assert "could not be read offline" in text
    # the plan's perplexity is in the body and in model-index
    assert "| 3.25 | 4.50 | +38.5% |" in text
    mi = data.eval_results
    assert [(r.metric_type, r.metric_value) for r in mi] == [("perplexity", 4.5)]


def test_card_uses_the_report_and_writes_eval_results(pruned, tmp_path):
    from huggingface_hub import ModelCard, parse_eval_result_entries

    folder, plan = pruned
    work = tmp_path / "m"
    import shutil

    shutil.copytree(folder, work)
    (work / "report.json").write_text(json.dumps(_report()))
    path = write_model_card(work)
    card = ModelCard.load(path)
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("Salesforce/wikitext", "perplexity")] == 116.8
    assert results[("allenai/ai2_arc", "acc")] == 0.52 and results[("allenai/ai2_arc", "acc_norm")] == 0.47
    assert results[("my_private_task", "acc")] == 0.3
    text = card.text
    assert "| WikiText-2 | 28.70 | 116.8 | +307.0% |" in text
    assert "0.6100 ± 0.0100" in text and "0.5200 ± 0.0110" in text and "| 0.83 |" in text.replace("0.8300", "0.83")
    assert "| prefill (tokens/s) | 1000.0 | 1320.0 | 1.32× |" in text
    assert "| parameters | 260.00K | 202.00K (77.7%) |" in text
    # .eval_results: only tasks that are Hub benchmark datasets
    files = sorted(p.name for p in (work / ".eval_results").iterdir())
    assert files == ["arc_easy.yaml"]
    entries = parse_eval_result_entries(yaml.safe_load((work / ".eval_results" / "arc_easy.yaml").read_text()))
    assert entries[0].dataset_id == "allenai/ai2_arc" and entries[0].task_id == "ARC-Easy" and entries[0].value == 0.52


def test_license_carried_over_from_a_local_base_model(pruned, tmp_path):
    folder, plan = pruned
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    p = copy.deepcopy(plan)
    p.base_model = str(base)
    card = render_model_card(folder, plan=p)
    assert card.data.license == "mit"
    assert card.data.base_model is None  # a local path is not a Hub id
    assert "carried over from the base model" in card.text
    # explicit license wins
    assert render_model_card(folder, plan=p, extra={"license": "apache-2.0"}).data.license == "apache-2.0"


def test_remote_code_model_card_says_how_to_load(pruned, tmp_path):
    folder, plan = pruned
    work = tmp_path / "sl"
    work.mkdir()
    (work / "config.json").write_text(json.dumps({"model_type": "streamline", "architectures": ["StreamlineForCausalLM"],
                                                  "auto_map": {"AutoConfig": "configuration_streamline.StreamlineConfig"}}))
    p = copy.deepcopy(plan)
    p.method, p.metric, p.selection = "replace", "block_cosine", "block"
    p.operations = [{"type": "replace", "kind": "mlp", "layers": [2, 3], "trained": True}]
    p.healing = [{"type": "replacement_training", "kind": "mlp", "steps": 10,
                  "loss_curve": [{"step": 1, "loss": 2.0}, {"step": 10, "loss": 0.5}]}]
    card = render_model_card(work, plan=p)
    assert "custom_code" in card.data.tags and "replace" in card.data.tags
    text = card.text
    assert "trust_remote_code=True" in text and "import hf_streamline" in text
    assert "replaced by `mlp`" in text and "Replaced block 2–3 by one trained `mlp` module." in text
    assert "training loss 2.00 → 0.5" in text
    assert "@article{chen2024streamline" in text


@pytest.mark.parametrize("kw, keys", [
    ({"metric": "angular", "selection": "block"}, ["gromov2024unreasonable"]),
    ({"metric": "reverse_order"}, ["lu2024reassessing"]),
    ({"metric": "taylor"}, ["kim2024shortened"]),
    ({"method": "merge", "metric": "cka", "selection": "sliding_window",
      "operations": [{"type": "merge", "layers": [2, 3, 4], "rule": "rdsc"}]}, ["ding2025slm", "yang2024laco"]),
    ({"method": "merge", "selection": "user", "operations": [{"type": "merge", "layers": [2, 3], "rule": "average"}]}, []),
])
def test_citations_follow_the_methods_used(kw, keys):
    plan = StreamlinePlan(base_model="x/y", num_layers_before=6, **kw)
    assert [c["key"] for c in citations_for_plan(plan)] == keys


def test_write_model_card_is_the_trainer_hook(pruned, tmp_path):
    import shutil

    folder, plan = pruned
    work = tmp_path / "t"
    shutil.copytree(folder, work)
    out = write_model_card(work, plan=plan, extra={"training": {"objective": "lm", "global_step": 7},
                                                   "limitations": ["Tested on stories only."]})
    text = out.read_text()
    assert out == work / "README.md"
    assert "**training**; objective: lm; global_step: 7" in text and "- Tested on stories only." in text
    assert not list(work.glob(".README.md.tmp-*"))
    (work / "streamline_plan.json").unlink()
    with pytest.raises(StreamlineError, match="streamline_plan.json"):
        write_model_card(work)


def test_card_command(pruned, tmp_path, capsys):
    from hf_streamline.cli import main

    folder, _ = pruned
    out = tmp_path / "card.md"
    assert main(["card", str(folder), "--output", str(out), "--repo-id", "me/m", "--license", "mit"]) == 0
    text = out.read_text()
    assert text.startswith("---\n") and "license: mit" in text and '"me/m"' in text
    assert not (folder / ".eval_results").exists()
    capsys.readouterr()
    assert main(["card", str(folder), "--output", "-"]) == 0
    assert "## What was changed" in capsys.readouterr().out
    assert main(["card", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["card", str(folder), "--report", str(tmp_path / "nope.json"), "--output", "-"]) == 2
    assert "--report" in capsys.readouterr().err


def test_write_eval_results_skips_unknown_tasks(tmp_path):
    assert write_eval_results(tmp_path, {"tasks": {"mine": {"pruned": {"acc": 0.5}}}}) == []
    assert not (tmp_path / ".eval_results").exists()


def test_minimal_plan_renders(tmp_path):
    """A plan with nothing but the operations (no scores, calibration, versions, evaluation) still gives a card."""
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    save_file({"model.layers.0.mlp.weight": torch_zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    plan = StreamlinePlan(base_model="some/model", num_layers_before=3, selection="user", removed_layers=[1],
                          operations=[{"type": "remove", "layers": [1]}])
    card = render_model_card(tmp_path, plan=plan)
    assert "Removed layer(s) 1 (chosen by hand)." in card.text and "No evaluation was recorded" in card.text
    assert "--layers 1" in card.text
    assert card.data.to_dict()["streamline"]["num_layers_after"] == 2


def torch_zeros(*shape):
    import torch

    return torch.zeros(*shape)


@pytest.mark.slow
def test_wheel_carries_the_templates(tmp_path):
    """Build the wheel from a copy of the project and find the template inside it."""
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "proj"
    shutil_ignore = __import__("shutil").ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    __import__("shutil").copytree(ROOT / "src", src / "src", ignore=shutil_ignore)
    for name in ("pyproject.toml", "README.md"):
        __import__("shutil").copy(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w",
                        str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert f"hf_streamline/model_cards/{TEMPLATE_NAME}" in names
    assert "hf_streamline/publishing/card.py" in names


def test_report_with_other_labels(pruned, tmp_path):
    """Reports label models freely; the base is 'dense' or the first model, this model 'pruned' or the last one."""
    folder, _ = pruned
    r = _report()
    ren = {"dense": "base", "pruned": "streamlined"}
    rep = {
        "models": {ren[k]: v for k, v in r["models"].items()},
        "perplexity": {t: {ren[k]: v for k, v in d.items()} for t, d in r["perplexity"].items()},
        "tasks": {t: {ren[k]: v for k, v in d.items()} for t, d in r["tasks"].items()},
        "pairs": {"streamlined_vs_base": r["pairs"]["pruned_vs_dense"]},
        "speed": {ren[k]: v for k, v in r["speed"].items()},
    }
    text = render_model_card(folder, report=rep).text
    assert "| WikiText-2 | 28.70 | 116.8 | +307.0% |" in text and "| 1.32× |" in text and "0.83" in text
    with pytest.raises(StreamlineError, match="no model labelled 'nope'"):
        render_model_card(folder, report=rep, extra={"model_label": "nope"})


@pytest.mark.parametrize("arch, tie", [("llama", True), ("llama", False), ("gpt_neox", False), ("opt", True)])
def test_a_saved_folder_counts_parameters_by_the_evaluation_reports_rule(arch, tie, tmp_path):
    """One parameter-count rule: the card's count of the saved weights equals transformers' num_parameters (the
    evaluation report's), also for an untied output head (a Linear, not an embedding)."""
    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    from hf_streamline.evaluation.speed import parameter_counts
    from hf_streamline.publishing.folder import count_parameters

    cfg = tiny_config(arch)
    cfg.tie_word_embeddings = tie
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(tmp_path)
    assert count_parameters(Path(tmp_path)) == parameter_counts(model)
