"""Issue 14: our requests are lm-eval's, character for character, for the stock tasks; task names, groups and
``--limit`` behave as in lm-eval.

lm-eval's own stock YAMLs (``include``d unchanged) are pointed at Hub-schema rows written from the bundled task files
(a local ``dataset_path: json``), so lm-eval builds the requests from its own templates, offline.
"""

from __future__ import annotations

import json

import pytest

REGISTERED = ["arc_easy", "arc_challenge", "piqa", "boolq", "openbookqa", "copa", "winogrande", "lambada_openai"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _lm_eval_requests(tasks, tmp_path):
    """lm-eval's requests for our selected items, built by lm-eval from its stock YAMLs over their Hub rows."""
    from lm_eval.tasks import TaskManager

    from hf_streamline.evaluation.lm_eval_bridge import write_lm_eval_tasks

    names = write_lm_eval_tasks(tasks, tmp_path)
    for name in names.values():  # every registered task goes through lm-eval's own YAML, not our columns
        assert "include:" in (tmp_path / f"{name}.yaml").read_text()
    loaded = TaskManager(include_path=str(tmp_path), include_defaults=False).load(list(names.values()))["tasks"]
    out = {}
    for ours, theirs in names.items():
        t = loaded[theirs]
        t.build_all_requests(limit=None, rank=0, world_size=1)
        by_doc: dict[int, list] = {}
        for inst in sorted(t.instances, key=lambda i: (i.doc_id, i.idx)):
            by_doc.setdefault(inst.doc_id, []).append(tuple(inst.arguments[:2]))
        out[ours] = [by_doc[i] for i in sorted(by_doc)]
    return out


def test_registered_requests_equal_lm_eval_stock_templates(data_dir, tmp_path):
    from hf_streamline.evaluation.tasks import resolve_tasks

    tasks = [t.select(40) for t in resolve_tasks(",".join(REGISTERED), task_dir=str(data_dir / "eval"))]
    assert [t.name for t in tasks] == REGISTERED
    theirs = _lm_eval_requests(tasks, tmp_path)
    for task in tasks:
        ours = [list(zip(it.contexts, it.continuations)) for it in task.items]
        assert ours == theirs[task.name], task.name
    # the stock templates, visibly (not our earlier prompts)
    arc = tasks[0].items[0]
    assert arc.contexts[0].startswith("Question: ") and arc.contexts[0].endswith("\nAnswer:")
    assert tasks[3].items[0].contexts[0].endswith("?\nAnswer:") and not tasks[3].items[0].contexts[0].startswith("Passage")
    assert tasks[5].items[0].continuations[0].startswith("  ")  # COPA: lm-eval's delimiter + its " choice"


def test_legacy_prompt_baked_rows_get_the_stock_template(tmp_path):
    """Rows in the prompt-baked format of earlier versions are recovered to Hub fields, then templated."""
    from hf_streamline.evaluation.tasks import resolve_task

    legacy = {
        "arc_easy": {"query": "Question: Which is a gas?", "choices": ["ice", "steam"], "gold": 1},
        "boolq": {"query": "Passage: Water boils at 100 C.\nQuestion: does water boil at 100 c?", "choices": ["no", "yes"],
                  "gold": 1},
        "piqa": {"query": "Question: Open a jar\n", "choices": ["twist the lid", "kick it"], "gold": 0},
        "copa": {"query": "The man turned on the faucet, therefore", "choices": ["the toilet filled.", "water flowed."],
                 "gold": 1},
        "winogrande": {"context_options": ["Sarah beat Sam so Sarah", "Sarah beat Sam so Sam"],
                       "continuation": "was happy.", "gold": 0},
    }
    expected = {
        "arc_easy": ("Question: Which is a gas?\nAnswer:", " steam"),
        "boolq": ("Water boils at 100 C.\nQuestion: does water boil at 100 c?\nAnswer:", " yes"),
        "piqa": ("Question: Open a jar\nAnswer:", " twist the lid"),
        "copa": ("The man turned on the faucet therefore", "  water flowed."),
        "winogrande": ("Sarah beat Sam so Sarah", " was happy."),
    }
    for name, row in legacy.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        item = resolve_task(str(path)).items[0]
        ctx, cont = expected[name]
        k = item.gold if name != "winogrande" else 0
        assert (item.contexts[k], item.continuations[k]) == (ctx, cont), name
        assert item.gold == row["gold"]
    wino = resolve_task(str(tmp_path / "winogrande.jsonl")).items[0]
    assert wino.hub == {"sentence": "Sarah beat Sam so _ was happy.", "option1": "Sarah", "option2": "Sam",
                        "answer": "1"}


def test_loglikelihoods_match_hflm_on_stock_requests(stories_dir, data_dir):
    """Our scorer on our requests == lm-eval's HFLM on lm-eval's stock requests (same items), to 1e-4."""
    from hf_streamline import load_model_and_tokenizer
    from hf_streamline.evaluation import compare_with_lm_eval, make_hflm

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    lm = make_hflm(model, tok, batch_size=8)
    for task in ("arc_easy", "boolq", "copa", "winogrande", "lambada_openai"):
        r = compare_with_lm_eval(model, tok, task, limit=6, task_dir=str(data_dir / "eval"), lm=lm)
        assert r["n"] == 6
        assert r["max_abs_loglikelihood_diff"] < 1e-4, r
        assert r["acc"] == r["acc_lm_eval"], r


def test_task_lists_groups_and_aliases_resolve(data_dir):
    from hf_streamline.evaluation.tasks import resolve_tasks

    names = lambda specs: [t.name for t in resolve_tasks(specs, task_dir=str(data_dir / "eval"))]  # noqa: E731
    assert names("arc_easy,copa") == ["arc_easy", "copa"]
    assert names(["arc_easy,copa", "piqa"]) == ["arc_easy", "copa", "piqa"]
    assert names("ai2_arc") == ["arc_challenge", "arc_easy"]  # an lm-eval tag, resolved by its TaskManager
    assert names("copa,ai2_arc,arc_easy") == ["copa", "arc_challenge", "arc_easy"]  # each task once
    assert names("openbook_qa") == ["openbookqa"]  # the earlier name still resolves
    from hf_streamline.errors import StreamlineError

    with pytest.raises(StreamlineError, match="lm-eval knows no task"):
        resolve_tasks("no_such_task_xyz", task_dir=str(data_dir / "eval"))


def test_limit_follows_lm_eval():
    from hf_streamline.evaluation.tasks import item_count, subsample_indices

    assert subsample_indices(10, 3) == [0, 1, 2]  # the first N, as lm-eval
    assert subsample_indices(10, 0.1) == [0] and subsample_indices(10, 0.25) == [0, 1, 2]  # ceil(n * fraction)
    assert item_count(300, 0.1) == 30 and item_count(5, 10) == 5 and item_count(5, None) == 5
    seeded = subsample_indices(10, 3, seed=0)
    assert seeded == sorted(seeded) and seeded == subsample_indices(10, 3, seed=0) and seeded != [0, 1, 2]


def test_lm_eval_yaml_task_with_local_data_is_scored_on_its_own_requests(tmp_path, data_dir, stories_dir):
    """--include-path: a user's lm-eval YAML (here a custom template over local rows) resolves by its task name, and
    the scorer gets exactly the requests lm-eval builds."""
    from hf_streamline import load_model_and_tokenizer
    from hf_streamline.evaluation import evaluate_tasks
    from hf_streamline.evaluation.tasks import resolve_tasks

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"q": f"{a} plus {a} is", "options": [str(2 * a), str(2 * a + 1)], "answer": 0})
                            + "\n" for a in range(1, 6)))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my_sums.yaml").write_text(
        f"task: my_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {rows}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{options}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n")
    (task,) = resolve_tasks("my_sums", include_path=str(tmp_path / "tasks"))
    assert task.items[0].contexts == ["1 plus 1 is"] * 2 and task.items[0].continuations == [" 2", " 3"]
    assert task.spec.kind == "multiple_choice" and len(task) == 5
    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    res = evaluate_tasks(model, tok, "my_sums,copa", include_path=str(tmp_path / "tasks"), task_dir=str(data_dir / "eval"),
                         limit=0.4, progress=False)
    assert res["my_sums"].n == 2 and res["copa"].n == 40


def test_generate_until_task_runs_in_lm_eval_and_reaches_the_report(tmp_path, stories_dir):
    """An lm-eval generate_until task (here a local YAML, as gsm8k would be by name with network) is generated and
    scored by lm-eval on our model, and reported beside the multiple-choice tasks."""
    import json as _json

    from hf_streamline.cli import main

    rows = tmp_path / "gen.jsonl"
    rows.write_text("".join(_json.dumps({"q": f"Once upon a time there was a {w}", "a": "little"}) + "\n"
                            for w in ("girl", "boy", "dog")))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "story_gen.yaml").write_text(
        f"task: story_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {rows}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    rc = main(["evaluate", "--model", str(stories_dir), "--tasks", "story_gen", "--include-path", str(tmp_path / "tasks"),
               "--limit", "2", "--no-speed", "--no-plots", "--output", str(tmp_path / "rep")])
    assert rc == 0
    rep = _json.loads((tmp_path / "rep" / "report.json").read_text())
    r = rep["generative"]["story_gen"]["pruned"]
    assert r["n"] == 2 and 0.0 <= r["metrics"]["exact_match"] <= 1.0
    assert "## Generative tasks" in (tmp_path / "rep" / "report.md").read_text()


def test_tasks_that_score_themselves_or_clash_are_refused(tmp_path, data_dir):
    import argparse

    from hf_streamline.arguments.evaluate import limit_type
    from hf_streamline.errors import StreamlineError
    from hf_streamline.evaluation.tasks import resolve_task, resolve_tasks

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"q": "1 plus 1 is", "options": ["2", "3"], "answer": 0}) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my_mcc.yaml").write_text(
        f"task: my_mcc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {rows}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{options}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: mcc\n")
    with pytest.raises(StreamlineError, match=r"lm-eval task 'my_mcc': it reports mcc.*lm_eval --model hf"):
        resolve_tasks("my_mcc", include_path=str(tmp_path / "tasks"))
    # two different tasks under one name: an error naming both, not one silently dropped
    other = tmp_path / "copa.jsonl"
    other.write_text((data_dir / "eval" / "copa.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(StreamlineError, match="two tasks are named 'copa'"):
        resolve_tasks(["copa", str(other)], task_dir=str(data_dir / "eval"))
    # legacy rows the recovery cannot read faithfully are refused, naming the line
    bad = {"winogrande": {"context_options": ["The cost_center of Sam", "The cost_center of Ann"],
                          "continuation": "grew.", "gold": 0},
           "lambada_openai": {"context": "He flew to", "continuation": "New York"}}
    for name, row in bad.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        with pytest.raises(StreamlineError, match=r"line 1: not a .* row"):
            resolve_task(str(path))
    # a BoolQ row already in lm-eval's form reads as itself
    boolq = tmp_path / "boolq.jsonl"
    boolq.write_text(json.dumps({"query": "Sky is blue.\nQuestion: is the sky blue?\nAnswer:", "choices": ["no", "yes"],
                                 "gold": 1}) + "\n")
    assert resolve_task(str(boolq)).items[0].contexts[0] == "Sky is blue.\nQuestion: is the sky blue?\nAnswer:"
    for text in ("nan", "inf", "0", "-1", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            limit_type(text)
    assert limit_type("0.1") == 0.1 and limit_type("20") == 20


def test_lm_eval_group_gets_its_size_weighted_score(tmp_path, data_dir, stories_dir):
    """A group (here a local YAML with a registered member and a local one) is scored per member and as lm-eval's
    aggregate: the members' acc weighted by their item counts."""
    from hf_streamline.cli import main

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"q": f"{a} plus {a} is", "options": [str(2 * a), str(2 * a + 1)], "answer": 0})
                            + "\n" for a in range(1, 7)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "my_sums.yaml").write_text(
        f"task: my_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {rows}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{options}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n")
    (tasks / "my_group.yaml").write_text("group: my_group\ntask:\n  - my_sums\n  - copa\naggregate_metric_list:\n"
                                         "  - metric: acc\n    aggregation: mean\n    weight_by_size: true\n")
    out = tmp_path / "rep"
    rc = main(["evaluate", "--model", str(stories_dir), "--tasks", "my_group", "--include-path", str(tasks),
               "--task-dir", str(data_dir / "eval"), "--limit", "0.5", "--no-speed", "--no-plots", "--output", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    copa, sums = rep["tasks"]["copa"]["pruned"], rep["tasks"]["my_sums"]["pruned"]
    assert (copa["n"], sums["n"]) == (50, 3)  # half of each, as lm-eval's --limit 0.5
    group = rep["groups"]["my_group"]["pruned"]
    assert group["n"] == 53 and group["weight_by_size"]
    assert group["acc"] == pytest.approx((50 * copa["acc"] + 3 * sums["acc"]) / 53)
    assert "## Task groups" in (out / "report.md").read_text()
