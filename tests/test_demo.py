"""`hf-streamline demo` end to end on the real stories260K model (small sizes): every promised file is produced."""

from __future__ import annotations

import json

import yaml

from hf_streamline.cli import main


def test_demo_end_to_end_on_stories260k(stories_dir, tmp_path, capsys):
    out = tmp_path / "streamline-demo"
    # only the data bundled with the package: no --data-dir, nothing beside the repository
    code = main(["demo", "--model", str(stories_dir), "--output", str(out),
                 "--samples", "8", "--seq-len", "64", "--heal-steps", "2", "--limit", "4", "--ppl-tokens", "1024",
                 "--no-speed"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"hf-streamline push {out}" in printed
    for name in ("config.json", "model.safetensors", "tokenizer.json", "streamline_plan.json", "streamline_recipe.yaml",
                 "README.md", "report/report.json", "report/report.md", "report/tasks.png"):
        assert (out / name).exists(), name
    plan = json.loads((out / "streamline_plan.json").read_text())
    assert plan["num_layers_before"] == 5 and len(plan["removed_layers"]) == 1  # 25% of 5 layers
    assert plan["healing"], "the healing step is recorded in the plan"
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["tasks"]) == {"arc_easy", "piqa", "boolq"}
    assert set(report["tasks"]["piqa"]) == {"dense", "pruned"}
    # the report names the final folder, not the staging folder it was evaluated in; the pruned model is smaller
    assert report["models"]["pruned"]["path"] == str(out)
    assert report["models"]["pruned"]["params"] < report["models"]["dense"]["params"]
    recipe = yaml.safe_load((out / "streamline_recipe.yaml").read_text())
    assert recipe["method"] == "remove" and recipe["heal"]["max_steps"] == 2
    # the saved recipe is portable: bundled data by name, no path of this machine
    assert recipe["calibration"]["source"] == "bundled:train/wikipedia_30_articles.txt"
    assert recipe["heal"]["data"] == ["bundled:train/wikipedia_30_articles.txt", "bundled:train/c4_300_docs.jsonl"]
    assert recipe["evaluate"]["task_dir"] == "bundled:eval"
    assert set(plan["healing"][-1]["data"]["sources"]) == {"bundled:train/wikipedia_30_articles.txt",
                                                          "bundled:train/c4_300_docs.jsonl"}  # pooled
    card = (out / "README.md").read_text()
    assert "hf-streamline" in card
    # the demo is the recommended recipe, scaled down, and says so
    assert recipe["remove"]["selection"] == "search" and recipe["heal"]["method"] == "distill"
    assert "scaled down" in printed and "healing: 2 steps" in printed
    assert plan["healing"] and "search" in plan["extra"]
    # the recipe's last_k: cut+2 trains every layer above the first removed one and the 2 below it (resolved from
    # the plan; at most the 4 that remain)
    assert recipe["heal"]["last_k"] == "cut+2"
    cut = min(plan["removed_layers"])
    assert plan["healing"][-1]["last_k"] == min(4, 4 - cut + 2)
    # lm_head stays frozen (the recipe's freeze_lm_head), and the frozen layers below the cut are read from the
    # teacher's pass wherever there are any
    assert recipe["heal"]["freeze_lm_head"] is True and plan["healing"][-1]["lm_head"] == "frozen"
    prefix = plan["healing"][-1]["kd_cache"].get("prefix")
    if cut > 2:  # the trained layers start at the cut - 2: the layers below them are read from the cache
        assert prefix["used"] and prefix["layers_skipped"] == cut - 2
    else:  # every layer trains: nothing below to skip
        assert not (prefix or {}).get("used")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".streamline-demo")]


def test_demo_data_dir_must_hold_the_demo_files(tmp_path, capsys):
    assert main(["demo", "--data-dir", str(tmp_path), "--output", str(tmp_path / "o"), "--validate-only"]) == 2
    err = capsys.readouterr().err
    assert "lacks train/wikipedia_30_articles.txt" in err and "leave --data-dir out" in err
