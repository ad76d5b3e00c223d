"""Issue 14: generative checks against the dense model, and a card that says how its numbers were measured."""

from __future__ import annotations

import copy

import pytest
import torch


def test_rouge_l_and_continuation_comparison_by_hand():
    from hf_streamline.evaluation.generation import compare_continuations, rouge_l_f1

    assert rouge_l_f1([1, 2, 3], [1, 2, 3]) == 1.0 and rouge_l_f1([1, 2], [3, 4]) == 0.0
    assert rouge_l_f1([1, 2, 3, 4], [1, 3, 4]) == pytest.approx(2 * 0.75 * 1.0 / 1.75)  # LCS 3: P 3/4, R 3/3
    ref = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    cand = torch.tensor([[1, 2, 3, 4], [5, 9, 7, 8]])
    r = compare_continuations(ref, cand)
    assert r["exact_match"] == 0.5 and r["prefix_tokens"] == (4 + 1) / 2 and r["token_match"] == 7 / 8


def test_generation_agreement_is_one_against_itself_and_lower_when_pruned(stories_dir, data_dir):
    from hf_streamline import load_model_and_tokenizer, remove_layers
    from hf_streamline.evaluation.generation import generation_agreement

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    text = data_dir / "text" / "stories260k_samples.txt"
    same = generation_agreement(model, model, tok, text, n=6, prompt_tokens=16, new_tokens=24)
    assert same["exact_match"] == 1.0 and same["rouge_l"] == 1.0 and same["prefix_tokens"] == 24
    pruned = remove_layers(copy.deepcopy(model), [1, 2])
    other = generation_agreement(model, pruned, tok, text, n=6, prompt_tokens=16, new_tokens=24)
    assert other["rouge_l"] < 1.0 and other["exact_match"] < 1.0 and other["prefix_tokens"] < 24
    assert other["prompts"] == 6 and other["example"]["base"] == same["example"]["base"]


def test_evaluate_reports_generation_beside_the_tasks(stories_dir, data_dir, tmp_path):
    import json

    from hf_streamline import load_model_and_tokenizer, remove_layers, save_pruned
    from hf_streamline.cli import main
    from hf_streamline.plan import StreamlinePlan

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    remove_layers(model, [3])
    plan = StreamlinePlan(base_model="stories260K", num_layers_before=5, method="remove", selection="user",
                          removed_layers=[3], operations=[{"type": "remove", "layers": [3]}])
    save_pruned(model, tok, plan, tmp_path / "pruned")
    rc = main(["evaluate", "--model", str(tmp_path / "pruned"), "--baseline", str(stories_dir), "--tasks", "copa",
               "--task-dir", str(data_dir / "eval"), "--limit", "0.05", "--ppl",
               str(data_dir / "text" / "stories260k_samples.txt"), "--ppl-tokens", "600", "--generate", "4",
               "--generate-tokens", "12", "--no-speed", "--no-plots", "--output", str(tmp_path / "rep")])
    assert rc == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    gen = rep["pairs"]["pruned_vs_dense"]["generation"]
    assert gen["prompts"] == 4 and gen["new_tokens"] == 12 and 0.0 <= gen["rouge_l"] < 1.0
    assert rep["tasks"]["copa"]["pruned"]["n"] == 5  # --limit 0.05 of 100 items, as lm-eval
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Generation" in md and "ROUGE-L" in md


def _speed(prefill, decode):
    return {"prefill_tokens_per_s": 128 / sorted(prefill)[len(prefill) // 2],
            "decode_tokens_per_s": 32 / sorted(decode)[len(decode) // 2], "prefill_s": prefill, "decode_s": decode,
            "prompt_len": 128, "new_tokens": 32, "batch_size": 1, "repeats": len(prefill)}


def test_speed_verdict_keeps_noise_out():
    from hf_streamline.evaluation.speed import speed_verdict

    steady = {"dense": _speed([1.0, 1.02, 0.99], [2.0, 2.05, 2.01]), "pruned": _speed([0.8, 0.81, 0.8], [1.5, 1.52, 1.5])}
    ok, why = speed_verdict(steady)
    assert ok and "within" in why
    noisy = copy.deepcopy(steady)
    noisy["pruned"] = _speed([0.8, 1.4, 0.8], [1.5, 1.52, 1.5])
    ok, why = speed_verdict(noisy)
    assert not ok and "pruned" in why and "75 %" in why
    ok, why = speed_verdict({"dense": _speed([1.0], [2.0]), "pruned": _speed([0.8], [1.5])})
    assert not ok and "at least 3 repeats" in why


def _card_for(tmp_path, stories_dir, speed, name):
    from hf_streamline import load_model_and_tokenizer, remove_layers, save_pruned
    from hf_streamline.plan import StreamlinePlan
    from hf_streamline.publishing import write_model_card

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    remove_layers(model, [3])
    plan = StreamlinePlan(base_model="stories260K", num_layers_before=5, method="remove", selection="user",
                          removed_layers=[3], operations=[{"type": "remove", "layers": [3]}])
    folder = save_pruned(model, tok, plan, tmp_path / name, model_card=False)
    report = {"version": 1, "baseline": "dense", "settings": {"ppl_max_tokens": 32768, "sample_seed": None},
              "models": {"dense": {"num_layers": 5}, "pruned": {"num_layers": 4}},
              "perplexity": {"wikitext2": {"dense": 20.0, "pruned": 30.0}},
              "perplexity_units": {"wikitext2": {"pruned": {"seq_len": 2048, "tokens": 32767}}},
              "tasks": {"arc_easy": {"dense": {"acc": 0.5, "acc_norm": 0.4, "n": 500},
                                     "pruned": {"acc": 0.4, "acc_norm": 0.35, "n": 500}}},
              "task_sources": {"arc_easy": {"items": 2376}}, "pairs": {}, "speed": speed}
    write_model_card(folder, report=report)
    return (folder / "README.md").read_text()


def test_card_leaves_a_noisy_speed_out_and_says_how_numbers_were_measured(tmp_path, stories_dir):
    from hf_streamline.publishing.metadata import eval_result_entries

    noisy = {"dense": _speed([1.0, 1.5, 1.0], [2.0, 2.0, 2.0]), "pruned": _speed([0.8, 0.8, 0.8], [1.5, 1.5, 1.5])}
    card = _card_for(tmp_path, stories_dir, noisy, "noisy")
    assert "decode (tokens/s)" not in card and "Speed was measured but is left out" in card
    steady = {"dense": _speed([1.0, 1.01, 1.0], [2.0, 2.0, 2.01]), "pruned": _speed([0.8, 0.8, 0.81], [1.5, 1.5, 1.5])}
    card = _card_for(tmp_path, stories_dir, steady, "steady")
    assert "decode (tokens/s)" in card and "left out" not in card
    # model-index: the sample size and the token cap travel with the numbers
    assert "items: 500" in card and "items_in_source: 2376" in card and "sample: first items" in card
    assert "token_cap: 32768" in card and "window_tokens: 2048" in card
    entries = eval_result_entries({"tasks": {"arc_easy": {"pruned": {"acc": 0.4, "n": 500}}},
                                   "task_sources": {"arc_easy": {"items": 2376, "prompts": "lm-eval"}},
                                   "settings": {"sample_seed": 3}})
    note = entries["arc_easy.yaml"][0].notes
    assert "500 of 2376 items (seeded random sample (seed 3))" in note and "lm-eval's stock prompt" in note
