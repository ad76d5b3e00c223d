"""YAML recipes: validation names the key and allowed values; a recipe runs end to end and re-running its saved
copy reproduces the same tensors; mergekit passthrough export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from hf_streamline import StreamlineError, StreamlinePlan
from hf_streamline.cli import main
from hf_streamline.recipes import RECIPE_FILENAME, load_recipe, mergekit_passthrough_yaml, validate_recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture()
def base_recipe(stories_dir, data_dir, tmp_path):
    return {
        "model": str(stories_dir),
        "calibration": {"source": str(data_dir / "text" / "stories260k_samples.txt"), "samples": 8, "seq_len": 64},
        "method": "remove",
        "remove": {"method": "block_influence", "remove": 1},
        "output": str(tmp_path / "out"),
    }


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_recipe_validates(example):
    recipe = load_recipe(example)
    assert recipe.method in ("remove", "replace", "merge")
    assert main(["run", str(example), "--validate-only"]) == 0


def test_examples_exist_for_each_seed_method():
    names = {p.stem for p in EXAMPLES.glob("*.yaml")}
    assert {"llm_streamline", "slm", "reassessing", "shortgpt"} <= names


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.update(colour="red"), r"recipe key `colour` is not known; allowed top-level keys"),
    (lambda r: r.update(method="prune"), r"`method` must be one of \['merge', 'remove', 'replace'\]"),
    (lambda r: r["remove"].update(metod="x"), r"recipe key `remove.metod` is not known; allowed keys for `remove`"),
    (lambda r: r["remove"].update(remove="many"), r"recipe key `remove.remove` must be a whole number, not 'many'"),
    (lambda r: r["calibration"].update(sampler="magic"), r"`calibration.sampler`: 'magic' is not allowed; allowed values"),
    (lambda r: r["remove"].update(output="x"), r"`remove.output` is set by the recipe itself"),
    (lambda r: r.update(evaluate={"ppl": ["t.txt"], "model_path": "x"}), r"`evaluate.model_path` is set by the recipe"),
    (lambda r: r.pop("output"), r"`output` .* is required"),
    (lambda r: r.update(merge={}), r"has a `merge` section but `method` is 'remove'"),
])
def test_bad_recipes_name_the_key(base_recipe, mutate, match):
    mutate(base_recipe)
    with pytest.raises(StreamlineError, match=match):
        validate_recipe(base_recipe)


def test_bad_recipe_file_via_cli(tmp_path, capsys, base_recipe):
    base_recipe["remove"]["block"] = "yes"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base_recipe))
    assert main(["run", str(path), "--validate-only"]) == 2
    assert "`remove.block` must be true or false" in capsys.readouterr().err


def test_recipe_runs_and_saved_recipe_reproduces_the_model(base_recipe, stories_dir, tmp_path):
    recipe = validate_recipe(base_recipe)
    from hf_streamline.recipes import run_recipe

    out = run_recipe(recipe)
    for name in ("model.safetensors", "config.json", "streamline_plan.json", RECIPE_FILENAME, "README.md"):
        assert (out / name).exists(), name
    assert not [p for p in out.iterdir() if p.name.startswith("_stage")]
    saved = yaml.safe_load((out / RECIPE_FILENAME).read_text())
    # the saved recipe names no path of this machine: bundled data as bundled:NAME (it resolves anywhere), a local
    # model folder by its name, which the user points at their copy of it
    assert saved["calibration"]["source"] == "bundled:text/stories260k_samples.txt"
    assert saved["model"] == "stories260K" and saved["output"] == "out"
    saved["model"] = str(stories_dir)
    saved["output"] = str(tmp_path / "again")
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(saved))
    assert main(["run", str(again)]) == 0
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_failed_recipe_leaves_no_output(base_recipe, tmp_path):
    base_recipe["calibration"]["samples"] = 5000  # too little text: fails inside the structural step
    with pytest.raises(StreamlineError, match="calibration text too short"):
        from hf_streamline.recipes import run_recipe

        run_recipe(validate_recipe(base_recipe))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_mergekit_passthrough_export(tmp_path, capsys):
    plan = StreamlinePlan(base_model="org/base", num_layers_before=10, removed_layers=[3, 4, 8],
                          operations=[{"type": "remove", "layers": [3, 4, 8]}])
    doc = yaml.safe_load(mergekit_passthrough_yaml(plan))
    assert doc["merge_method"] == "passthrough"
    assert [s["sources"][0]["layer_range"] for s in doc["slices"]] == [[0, 3], [5, 8], [9, 10]]
    plan.save(tmp_path)
    assert main(["mergekit", str(tmp_path)]) == 0
    assert "layer_range" in capsys.readouterr().out
    merged = StreamlinePlan(base_model="b", num_layers_before=4, operations=[{"type": "merge", "layers": [1, 2]}])
    with pytest.raises(StreamlineError, match="only plain layer removal"):
        mergekit_passthrough_yaml(merged)
