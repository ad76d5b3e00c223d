"""Evaluation core: the lm-eval-style scorer, acc / acc_norm, stability, agreement, speed, task files and their errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hf_streamline.errors import StreamlineError
from hf_streamline.evaluation import (LoglikelihoodScorer, TaskSpec, compute_stability, encode_pair, evaluate_task,
                                      load_jsonl_task, mean_stderr, next_token_agreement, parameter_counts,
                                      reference_code_stability, resolve_task, same_prediction_rate, stability_weights,
                                      subsample_indices)
from hf_streamline.evaluation.multiple_choice import RequestResult, task_result
from hf_streamline.evaluation.stability import effective_questions
from hf_streamline.evaluation.tasks import Task, row_to_item
from tiny_models import tiny_model


class CharTokenizer:
    """A deterministic character tokenizer with a BOS token (like Llama tokenizers add by default)."""

    bos_token_id, eos_token_id, pad_token_id, model_max_length = 1, 2, 0, 128

    def encode(self, s: str) -> list[int]:
        return [1] + [3 + (ord(c) % 120) for c in s]


GROUPS = [
    [("The cat sat on the", " mat."), ("The cat sat on the", " moon, far")],
    [("Question: is it? ", "yes"), ("Question: is it? ", "no"), ("Question: is it? ", "not")],  # trailing space
    [("Sarah was better than Maria so Sarah", " got it."), ("Sarah was better than Maria so Maria", " got it.")],
    [("x", " y")],
    [("", "empty")],
]


def direct_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """Token by token: one un-batched, cache-free forward per continuation token."""
    req = encode_pair(tok, context, continuation)
    total = 0.0
    with torch.no_grad():
        for k, target in enumerate(req.continuation):
            ids = torch.tensor([req.context + req.continuation[:k]])
            total += float(torch.log_softmax(model(ids).logits[0, -1].float(), -1)[target])
    return total


_DIRECT: dict[str, list[list[float]]] = {}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "qwen2_moe"])
@pytest.mark.parametrize("prefix_reuse", [False, True])
def test_scorer_equals_token_by_token_loglikelihood(arch, prefix_reuse):
    model, tok = tiny_model(arch, 2), CharTokenizer()
    if arch not in _DIRECT:  # the slow reference, computed once per architecture
        _DIRECT[arch] = [[direct_loglikelihood(model, tok, c, x) for c, x in g] for g in GROUPS]
    scorer = LoglikelihoodScorer(model, tok, batch_size=2, prefix_reuse=prefix_reuse, progress=False)
    got = scorer.score_groups(GROUPS)
    for group, results, direct in zip(GROUPS, got, _DIRECT[arch]):
        for (ctx, cont), res, d in zip(group, results, direct):
            assert res.logprob == pytest.approx(d, abs=1e-4)
            assert res.num_tokens == len(encode_pair(tok, ctx, cont).continuation)


def test_encode_pair_follows_lm_eval():
    tok = CharTokenizer()
    r = encode_pair(tok, "Answer: ", "yes")  # trailing whitespace moves to the continuation
    assert r.context == tok.encode("Answer:") and r.continuation == tok.encode("Answer: yes")[len(r.context):]
    assert len(r.continuation) == 4  # " yes"
    r = encode_pair(tok, "", "hi")  # empty context: the BOS token, then the continuation as the tokenizer encodes it
    assert r.context == [1] and r.continuation == tok.encode("hi")


def test_greedy_flag_and_truncation():
    model, tok = tiny_model("llama", 2), CharTokenizer()
    scorer = LoglikelihoodScorer(model, tok, batch_size=4, progress=False, max_length=16)
    long_ctx = "a long context that is much longer than sixteen tokens"
    res = scorer.score([(long_ctx, " end")])[0]
    req = encode_pair(tok, long_ctx, " end")
    full = (req.context + req.continuation)[-17:]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full[:-1]])).logits[0].float(), -1)
    expect = sum(float(logp[-4 + k, t]) for k, t in enumerate(full[-4:]))  # the last 4 positions predict them
    assert res.logprob == pytest.approx(expect, abs=1e-4)
    greedy = logp[-4:].argmax(-1).tolist()
    assert res.is_greedy == (greedy == full[-4:]) and res.greedy_tokens == greedy


def _fake(lls, ntoks):
    return [RequestResult(l, False, n) for l, n in zip(lls, ntoks)]


def test_acc_norm_divides_by_choice_characters_not_tokens_nor_delimiter():
    spec = TaskSpec("t", "multiple_choice", delimiter=" ")
    item = row_to_item({"query": "q", "choices": ["a", "bbbbbbbbbb"], "gold": 1}, spec, 0, "row 0")
    assert item.continuations == [" a", " bbbbbbbbbb"] and item.norm_lengths == [1, 10]
    # a: 1 char, 1 token, ll -2 (-2/char, -2/token); b: 10 chars, 5 tokens, ll -12 (-1.2/char, -2.4/token)
    res = task_result(Task(spec, [item], "x"), [_fake([-2.0, -12.0], [1, 5])], [0])
    assert res.pred == [0] and res.acc == 0.0  # raw sum prefers "a"
    assert res.pred_norm == [1] and res.acc_norm == 1.0  # per character prefers "b"; per token would prefer "a"


def test_acc_norm_end_to_end_on_a_tiny_model(tmp_path):
    rows = [{"query": "The sky is", "choices": ["blue", "a very long green answer here"], "gold": 0},
            {"query": "Two plus two is", "choices": ["four", "fish", "x"], "gold": 2}]
    f = tmp_path / "mini.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    model, tok = tiny_model("llama", 2), CharTokenizer()
    res = evaluate_task(model, tok, str(f), progress=False)
    assert res.n == 2 and res.kind == "multiple_choice"
    for row, lls, pred, pred_norm in zip(rows, res.loglikelihoods, res.pred, res.pred_norm):
        direct = [direct_loglikelihood(model, tok, row["query"], c) for c in row["choices"]]  # no delimiter: as stored
        assert lls == pytest.approx(direct, abs=1e-4)
        assert pred == max(range(len(direct)), key=lambda i: direct[i])
        norm = [d / len(c) for d, c in zip(direct, row["choices"])]
        assert pred_norm == max(range(len(norm)), key=lambda i: norm[i])
    assert res.acc == sum(res.correct) / 2 and res.acc_stderr == pytest.approx(mean_stderr(res.correct))


def test_partial_and_last_word_tasks(tmp_path):
    model, tok = tiny_model("llama", 2), CharTokenizer()
    wino = Task(TaskSpec("w", "partial", " "), [row_to_item(
        {"context_options": ["Ann beat Bo so Ann", "Ann beat Bo so Bo"], "continuation": "won.", "gold": 0},
        TaskSpec("w", "partial", " "), 0, "r")], "mem")
    r = evaluate_task(model, tok, wino, progress=False)
    direct = [direct_loglikelihood(model, tok, c, " won.") for c in ("Ann beat Bo so Ann", "Ann beat Bo so Bo")]
    assert r.loglikelihoods[0] == pytest.approx(direct, abs=1e-4)
    assert r.acc == r.acc_norm == float(direct[0] > direct[1])
    lam = Task(TaskSpec("l", "last_word", " "), [row_to_item({"context": "one two", "continuation": "three"},
                                                              TaskSpec("l", "last_word", " "), 0, "r")], "mem")
    r = evaluate_task(model, tok, lam, progress=False)
    ll = direct_loglikelihood(model, tok, "one two", " three")
    assert r.loglikelihoods[0][0] == pytest.approx(ll, abs=1e-4)
    assert r.perplexity == pytest.approx(math.exp(-ll), rel=1e-4)
    assert r.acc in (0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# stability


def test_stability_hand_computed_and_reference_code_differs():
    ppl = [[1.0, 3.0], [2.0, 2.0], [5.0, 1.0]]  # population std 1, 0, 2
    e = [math.e ** 1, 1.0, math.e ** 2]
    w = [x / sum(e) for x in e]  # 0.2447, 0.0900, 0.6652
    assert stability_weights(ppl) == pytest.approx(w)
    original, pruned = [1, 1, 1], [0, 1, 1]  # questions 1 and 2 match
    assert compute_stability(ppl, original, pruned) == pytest.approx(w[1] + w[2])  # 0.7553 (the definition)
    assert reference_code_stability(ppl, original, pruned) == pytest.approx(w[0] + w[1])  # 0.3348 (first 2 weights)
    assert compute_stability(ppl, original, pruned) != pytest.approx(reference_code_stability(ppl, original, pruned))


def test_stability_both_wrong_counts_and_matching_prefix_agrees():
    ppl = [[1.0, 3.0], [2.0, 2.0], [5.0, 1.0]]
    assert compute_stability(ppl, [0, 0, 0], [0, 0, 0]) == pytest.approx(1.0)  # both wrong everywhere: fully stable
    assert compute_stability(ppl, [1, 0, 1], [0, 1, 0]) == pytest.approx(0.0)
    # the matching question is the first one: the reference code happens to agree
    assert compute_stability(ppl, [1, 0, 1], [1, 1, 0]) == pytest.approx(reference_code_stability(ppl, [1, 0, 1], [1, 1, 0]))
    # equal spreads -> uniform weights -> the plain match rate
    flat = [[2.0, 4.0]] * 4
    assert compute_stability(flat, [1, 1, 0, 0], [1, 0, 0, 1]) == pytest.approx(0.5)
    assert effective_questions(stability_weights(flat)) == pytest.approx(4.0)
    with pytest.raises(StreamlineError, match="same items"):
        compute_stability(ppl, [1, 1, 1], [1, 1])


# ---------------------------------------------------------------------------------------------------------------------
# agreement, size, speed


def test_next_token_agreement_and_same_prediction():
    a = tiny_model("llama", 3, seed=0)
    b = tiny_model("llama", 3, seed=1)
    ids = torch.randint(3, 120, (300,), generator=torch.Generator().manual_seed(0))
    same = next_token_agreement(a, a, None, ids, seq_len=64, progress=False)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 1.0 and same["tokens"] == 300
    diff = next_token_agreement(a, b, None, ids, seq_len=64, progress=False)
    assert diff["kl"] > 1e-3 and diff["top1_agreement"] < 1.0
    assert same_prediction_rate([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    with pytest.raises(StreamlineError):
        same_prediction_rate([0], [0, 1])


def test_parameter_counts_tied_and_position_embeddings():
    from hf_streamline import remove_layers

    gpt2 = tiny_model("gpt2", 2)  # tied lm_head, learned position embeddings
    c = parameter_counts(gpt2)
    unique = {id(p): p.numel() for p in gpt2.parameters()}
    assert c["params"] == sum(unique.values())
    emb = gpt2.transformer.wte.weight.numel() + gpt2.transformer.wpe.weight.numel()
    assert c["non_embedding_params"] == c["params"] - emb
    llama = tiny_model("llama", 4)
    before = parameter_counts(llama)
    remove_layers(llama, [1])
    after = parameter_counts(llama)
    assert before["params"] - after["params"] == before["non_embedding_params"] - after["non_embedding_params"] > 0


def test_measure_speed_interleaved():
    from hf_streamline.evaluation import measure_speed

    models = {"a": tiny_model("llama", 2), "b": tiny_model("llama", 1)}
    out = measure_speed(models, prompt_len=8, new_tokens=3, repeats=2, progress=False)
    for v in out.values():
        assert v["prefill_tokens_per_s"] > 0 and v["decode_tokens_per_s"] > 0
        assert len(v["prefill_s"]) == len(v["decode_s"]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# task files, registry, bad input


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return p


def test_missing_field_names_the_line(tmp_path):
    p = _write(tmp_path, "t.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 0}, {"query": "q", "choices": ["a", "b"]}])
    with pytest.raises(StreamlineError, match=r"line 2: missing field 'gold'"):
        load_jsonl_task(p)


def test_gold_out_of_range_names_the_line(tmp_path):
    p = _write(tmp_path, "t.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 0}, "",
                                     {"query": "q", "choices": ["a", "b"], "gold": 2}])
    with pytest.raises(StreamlineError, match=r"line 3: gold 2 is out of range for 2 choices"):
        load_jsonl_task(p)
    w = _write(tmp_path, "w.jsonl", [{"context_options": ["a", "b"], "continuation": "c", "gold": -1}])
    with pytest.raises(StreamlineError, match=r"line 1: gold -1 is out of range"):
        load_jsonl_task(w)


def test_bad_json_and_empty_task_are_errors(tmp_path):
    p = _write(tmp_path, "t.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 0}, "{not json"])
    with pytest.raises(StreamlineError, match="line 2: not valid JSON"):
        load_jsonl_task(p)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(StreamlineError, match="no items"):
        load_jsonl_task(empty)
    with pytest.raises(StreamlineError, match="no items"):
        evaluate_task(tiny_model("llama", 1), CharTokenizer(), Task(TaskSpec("e"), [], "mem"), progress=False)
    with pytest.raises(StreamlineError, match="no tasks"):
        from hf_streamline.evaluation import evaluate_tasks

        evaluate_tasks(tiny_model("llama", 1), CharTokenizer(), [])


def test_cli_names_the_bad_line(tmp_path, capsys, stories_dir):
    from hf_streamline.cli import main

    p = _write(tmp_path, "bad.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 0}, {"query": "q", "choices": ["a"], "gold": 0}])
    rc = main(["evaluate", "--model", str(stories_dir), "--tasks", str(p), "--output", str(tmp_path / "out"), "--no-speed"])
    err = capsys.readouterr().err
    assert rc == 2 and "line 2" in err and "choices" in err
    assert not (tmp_path / "out").exists()


def test_subsample_is_seeded_sorted_and_complete():
    a, b, c = subsample_indices(100, 10, 0), subsample_indices(100, 10, 0), subsample_indices(100, 10, 1)
    assert a == b and a != c and a == sorted(a) and len(set(a)) == 10
    assert subsample_indices(5, 10, 0) == [0, 1, 2, 3, 4] == subsample_indices(5, None)
    with pytest.raises(StreamlineError):
        subsample_indices(5, 0)
    with pytest.raises(StreamlineError, match="whole number"):
        subsample_indices(5, 2.5)
    with pytest.raises(StreamlineError, match="no items"):
        subsample_indices(0, None)


def test_shared_tasks_load_with_registered_specs(data_dir):
    # the bundled subsets: the first 300 items of each standard split (COPA: all 100)
    counts = {"arc_easy": 300, "arc_challenge": 300, "piqa": 300, "openbookqa": 300, "boolq": 300, "copa": 100,
              "winogrande": 300, "lambada_openai": 300}
    eval_dir = data_dir / "eval"
    for name, n in counts.items():
        task = resolve_task(name, task_dir=str(eval_dir))
        assert len(task) == n and task.spec.name == name
    copa = resolve_task(str(eval_dir / "copa.jsonl"))  # a file named like a registered task keeps its spec
    assert copa.spec.delimiter == " " and copa.items[0].continuations[0] == "  the toilet filled with water."
    piqa = resolve_task(f"piqa={eval_dir / 'piqa.jsonl'}")
    assert piqa.spec.delimiter == " " and piqa.items[0].contexts[0].endswith("\nAnswer:")
    wino = resolve_task("winogrande", task_dir=str(eval_dir))
    assert wino.spec.kind == "partial" and wino.items[0].continuations == [" always got the easier cases."] * 2


def test_plain_file_uses_choices_as_stored_and_yaml_config_sets_delimiter(tmp_path):
    data = _write(tmp_path, "mine.jsonl", [{"query": "Q:", "choices": [" yes", " no"], "gold": 0}])
    plain = resolve_task(str(data))
    assert plain.spec.delimiter == "" and plain.items[0].continuations == [" yes", " no"]
    cfg = tmp_path / "mine.yaml"
    cfg.write_text('name: mine2\nkind: multiple_choice\ndelimiter: "\\n"\npath: mine.jsonl\n')
    t = resolve_task(str(cfg))
    assert t.name == "mine2" and t.items[0].continuations == ["\n yes", "\n no"]


def test_hub_loader_converts_rows(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_STREAMLINE_EVAL_DIR", raising=False)
    rows = [{"question": "Which?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "C"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: rows)
    t = resolve_task("arc_easy", task_dir=None)
    assert t.items[0].contexts[0] == "Question: Which?\nAnswer:" and t.items[0].gold == 2 and t.items[0].continuations[0] == " a"

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(StreamlineError, match="^task_dir: task 'copa': no local file.*give that folder here"):
        resolve_task("copa", task_dir=None)
    with pytest.raises(StreamlineError, match="unknown task"):
        resolve_task("no_such_task")


def test_model_labels_and_report_nan_is_null(tmp_path):
    from hf_streamline.workflows.evaluate import model_labels
    from hf_streamline.evaluation import load_report, write_report

    assert model_labels("p/", "d/", []) == {"dense": "d/", "pruned": "p/"}
    assert model_labels("a/m1", "d/", ["b/m2", "c/m1"]) == {"dense": "d/", "m1": "a/m1", "m2": "b/m2", "m1_2": "c/m1"}
    rep = {"models": {"pruned": {"path": "p", "num_layers": 2, "params": 10, "non_embedding_params": 5}},
           "tasks": {"t": {"pruned": {"acc": 1.0, "acc_stderr": float("nan"), "acc_norm": 1.0,
                                      "acc_norm_stderr": float("nan"), "n": 1}}}}
    out = write_report(rep, tmp_path / "r")
    back = load_report(out)
    assert back["tasks"]["t"]["pruned"]["acc_stderr"] is None and (out / "tasks.png").is_file()
    assert "| pruned | 1 | 1.00 | 1.00 |" in (out / "report.md").read_text()
