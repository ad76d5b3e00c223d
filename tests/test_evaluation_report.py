"""`hf-streamline evaluate` end to end on stories260K (dense vs one layer removed) with the shared tasks, and the
agreement of our scorer with lm-eval-harness on the same items."""

from __future__ import annotations

import json
import math
import re

import pytest

from hf_streamline.evaluation import compute_stability, load_report
from hf_streamline.evaluation.report import fmt, fmt_ppl, fmt_rel, render_markdown

SHARED_TASKS = ["arc_easy", "arc_challenge", "piqa", "openbookqa", "boolq", "copa", "winogrande", "lambada_openai"]


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, stories_dir):
    from hf_streamline import load_model_and_tokenizer, remove_layers, save_pruned
    from hf_streamline.plan import StreamlinePlan

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    plan = StreamlinePlan(base_model="stories260K", num_layers_before=5, method="remove", selection="user")
    remove_layers(model, [3])
    plan.removed_layers = [3]
    plan.operations.append({"type": "remove", "layers": [3]})
    out = tmp_path_factory.mktemp("pruned") / "stories_minus_3"
    save_pruned(model, tok, plan, out)
    return out


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, stories_dir, pruned_dir, data_dir):
    from hf_streamline.cli import main

    out = tmp_path_factory.mktemp("rep") / "report"
    rc = main(["evaluate", "--model", str(pruned_dir), "--baseline", str(stories_dir),
               "--ppl", str(data_dir / "text" / "stories260k_samples.txt"), "--ppl-tokens", "1500",
               "--tasks", *SHARED_TASKS, "--task-dir", str(data_dir / "eval"), "--limit", "6", "--seed", "3",
               "--speed-repeats", "1", "--speed-prompt-len", "16", "--speed-new-tokens", "4", "--agreement-tokens", "1024",
               "--output", str(out)])
    assert rc == 0
    return out


def test_report_files_and_schema(report_dir):
    for name in ("report.json", "report.md", "tasks.png", "accuracy_vs_removed.png", "perplexity_vs_removed.png"):
        assert (report_dir / name).is_file(), name
    assert (report_dir / "tasks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = load_report(report_dir)
    assert set(rep["models"]) == {"dense", "pruned"}
    for m in rep["models"].values():
        assert {"path", "num_layers", "params", "non_embedding_params"} <= set(m)
    assert rep["models"]["dense"]["num_layers"] == 5 and rep["models"]["pruned"]["num_layers"] == 4
    assert rep["models"]["pruned"]["fraction_removed"] == pytest.approx(0.2)
    assert rep["models"]["pruned"]["params"] < rep["models"]["dense"]["params"]
    assert set(rep["perplexity"]["stories260k_samples"]) == {"dense", "pruned"}
    assert list(rep["tasks"]) == SHARED_TASKS
    for task, per in rep["tasks"].items():
        for r in per.values():
            assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"} <= set(r) and r["n"] == 6
    pair = rep["pairs"]["pruned_vs_dense"]
    assert set(pair["stability"]) == set(pair["same_prediction_rate"]) == set(SHARED_TASKS)
    assert pair["kl"] > 0 and 0 <= pair["top1_agreement"] <= 1
    for label in ("dense", "pruned"):
        assert rep["speed"][label]["prefill_tokens_per_s"] > 0 and rep["speed"][label]["decode_tokens_per_s"] > 0


def test_report_numbers_match_the_samples(report_dir):
    rep = load_report(report_dir)
    for task in SHARED_TASKS:
        rows = {l: [json.loads(x) for x in (report_dir / "samples" / l / f"{task}.jsonl").read_text().splitlines()]
                for l in ("dense", "pruned")}
        assert [r["index"] for r in rows["dense"]] == [r["index"] for r in rows["pruned"]]  # same items
        for label, rr in rows.items():
            assert rep["tasks"][task][label]["acc"] == pytest.approx(sum(r["acc"] for r in rr) / len(rr))
            assert rep["tasks"][task][label]["acc_norm"] == pytest.approx(sum(r["acc_norm"] for r in rr) / len(rr))
        ppl = [[2.718281828 ** (-ll / n) for ll, n in zip(r["loglikelihoods"], r["num_tokens"])] for r in rows["dense"]]
        expect = compute_stability(ppl, [r["acc"] for r in rows["dense"]], [r["acc"] for r in rows["pruned"]])
        assert rep["pairs"]["pruned_vs_dense"]["stability"][task] == pytest.approx(expect, rel=1e-6)


def _table_rows(md: str, heading: str) -> list[list[str]]:
    block = md.split(f"### {heading}\n", 1)[1].strip("\n").split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_markdown_numbers_match_the_json(report_dir):
    rep = load_report(report_dir)
    md = (report_dir / "report.md").read_text()
    assert md == render_markdown(rep)
    pair = rep["pairs"]["pruned_vs_dense"]
    for task in SHARED_TASKS:
        rows = {r[0]: r for r in _table_rows(md, task)}
        assert set(rows) == {"dense", "pruned"}
        for label, r in rows.items():
            v = rep["tasks"][task][label]
            assert r[1] == str(v["n"])
            assert r[2].startswith(fmt(v["acc"])) and r[3].startswith(fmt(v["acc_norm"]))
            if v["acc_stderr"] is not None:
                assert r[2] == f"{fmt(v['acc'])} ± {fmt(v['acc_stderr'])}"
        d, p = rep["tasks"][task]["dense"], rep["tasks"][task]["pruned"]
        rel = None if not d["acc"] else 100 * p["acc"] / d["acc"]
        assert rows["pruned"][4] == fmt_rel(rel)
        assert rows["pruned"][6].startswith(fmt(pair["stability"][task]))
        assert rows["pruned"][7] == fmt(pair["same_prediction_rate"][task])
    ppl_line = re.search(r"^\| stories260k_samples \(token\) \|(.*)$", md, re.M).group(1)
    assert [c.strip() for c in ppl_line.strip("|").split("|")] == [
        fmt_ppl(rep["perplexity"]["stories260k_samples"][l]) for l in ("dense", "pruned")]
    # word / byte perplexity: the same NLL per word / per byte (lm-eval's wikitext metrics)
    units = rep["perplexity_units"]["stories260k_samples"]
    for label in ("dense", "pruned"):
        u = units[label]
        assert u["seq_len"] == 2048 and u["tokens"] == 1499  # min(2048, the model's context); 1500 tokens, 1 window
        tok_nll = math.log(rep["perplexity"]["stories260k_samples"][label]) * u["tokens"]
        assert math.log(u["word_perplexity"]) * u["words"] == pytest.approx(tok_nll, rel=1e-6)
        assert math.log(u["byte_perplexity"]) * u["bytes"] == pytest.approx(tok_nll, rel=1e-6)
        assert u["words"] < u["tokens"] < u["bytes"]
    word_line = re.search(r"^\| stories260k_samples \(word\) \|(.*)$", md, re.M).group(1)
    assert [c.strip() for c in word_line.strip("|").split("|")] == [fmt_ppl(units[l]["word_perplexity"])
                                                                     for l in ("dense", "pruned")]


def test_same_items_for_every_model_and_seeded(report_dir, stories_model, data_dir):
    from hf_streamline.evaluation import evaluate_task

    model, tok = stories_model
    rows = [json.loads(x) for x in (report_dir / "samples" / "dense" / "copa.jsonl").read_text().splitlines()]
    again = evaluate_task(model, tok, "copa", limit=6, seed=3, task_dir=str(data_dir / "eval"), progress=False)
    assert again.indices == [r["index"] for r in rows]
    for got, row in zip(again.loglikelihoods, rows):
        assert got == pytest.approx(row["loglikelihoods"], abs=1e-4)


def test_scorer_agrees_with_lm_eval_harness(stories_dir, data_dir, monkeypatch):
    """lm-eval's HFLM on our local-file tasks (offline), same items: same log-likelihoods and accuracies."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from hf_streamline.evaluation import compare_with_lm_eval, make_hflm

    lm = make_hflm(str(stories_dir), batch_size=8)  # loaded from the folder by lm-eval itself (AutoModelForCausalLM)
    model, tok = lm.model, lm.tokenizer
    for task in ("piqa", "winogrande", "lambada_openai"):  # delimiter "", partial scoring, last word
        r = compare_with_lm_eval(model, tok, task, limit=5, seed=0, task_dir=str(data_dir / "eval"), lm=lm)
        assert r["n"] == 5
        assert r["max_abs_loglikelihood_diff"] < 1e-3, r
        assert r["acc"] == r["acc_lm_eval"] and r["acc_norm"] == r["acc_norm_lm_eval"], r


def test_the_report_the_card_and_the_healing_table_format_numbers_one_way():
    """One formatter (hf_streamline.formatting) behind every rendered number."""
    from hf_streamline import formatting
    from hf_streamline.evaluation import report as report_mod
    from hf_streamline.healing import compare
    from hf_streamline.publishing import context

    assert report_mod.fmt is formatting.number and report_mod.fmt_ppl is formatting.number
    assert context.number is formatting.number and compare.number is formatting.number
    assert [formatting.number(v) for v in (None, float("nan"), 134515008, 123456.0, 123.45, 35.812, 0.40651)] == [
        "—", "—", "134,515,008", "1.23e+05", "123.5", "35.81", "0.4065"]
    assert formatting.count(134_515_008) == "134.52M" and formatting.percent(93.31) == "93.3%"
