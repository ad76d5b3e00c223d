"""Self-distillation data (``heal --self-distill N``): the dense teacher's greedy continuations of prompts taken
from the healing data replace the training set: each equals ``teacher.generate`` on its prompt alone (left-padded
batches of different lengths included), the loss covers the generated tokens only, the validation split stays the
original, runs are deterministic, the CLI needs --teacher, records the cost and loads the teacher once."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hf_streamline import StreamlineError
from hf_streamline.cli import main
from hf_streamline.healing import HealingConfig, HealingData, HealingDataConfig, heal
from hf_streamline.healing.data import InstructionExamples
from hf_streamline.healing.self_distill import generate_continuations, self_distill_data
from test_heal_resume import text_file  # noqa: F401 - fixture
from test_healing import ToyTokenizer, _data, _one_thread  # noqa: F401 - the one-thread fixture
from tiny_models import tiny_model

EOS, PAD = ToyTokenizer.eos_token_id, ToyTokenizer.pad_token_id


def _reference(teacher, prompt, n):
    """``teacher.generate`` on one prompt alone (no padding), greedy, cut after its first EOS."""
    out = teacher.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           max_new_tokens=n, do_sample=False, pad_token_id=PAD, eos_token_id=EOS)[0, len(prompt):]
    cont = out.tolist()
    return cont[:cont.index(EOS) + 1] if EOS in cont else cont


def _instruction_data(lengths=(3, 9, 5, 14, 7, 11), seed=0):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        prompt = [1] + [int(x) for x in torch.randint(3, 128, (n - 1,), generator=g)]
        response = [int(x) for x in torch.randint(3, 128, (4,), generator=g)] + [EOS]
        examples.append({"input_ids": prompt + response, "labels": [-100] * len(prompt) + response})
    train = InstructionExamples(examples[:-1])
    held = InstructionExamples(examples[-1:])
    return HealingData(train, held, "alpaca", HealingDataConfig(source="toy", seq_len=64), PAD, train.mean_tokens,
                       {"template": "alpaca"})


def _config(n=8, **kw):
    kw.setdefault("self_distill_prompt_len", 6)
    return HealingConfig(self_distill=n, batch_size=kw.pop("batch_size", 4), progress=False, **kw)


# ---- (a) the continuations ------------------------------------------------------------------------------------------

def test_continuations_equal_greedy_generate_per_prompt_in_left_padded_batches():
    teacher = tiny_model("llama")
    prompts = [[1, 5, 9], [1, 40, 41, 42, 43, 44, 45, 46, 47], [1, 7], [1] + list(range(60, 72))]
    conts, cost = generate_continuations(teacher, prompts, 10, pad_token_id=PAD, eos_token_ids=[EOS], batch_size=4,
                                         progress=False)
    for p, c in zip(prompts, conts):
        assert c == _reference(teacher, p, 10), p
    assert cost["prompts"] == 4 and cost["generated_tokens"] == sum(map(len, conts))


def test_instruction_data_gets_the_teachers_responses_and_keeps_its_validation_split():
    teacher = tiny_model("llama")
    data = _instruction_data()
    new, info = self_distill_data(teacher, ToyTokenizer(), data, _config(8, batch_size=3))
    assert new.eval is data.eval, "validation stays the original data"
    assert len(new.train) == len(data.train)
    for i in range(len(data.train)):
        old_ex, new_ex = data.train.examples[i], new.train.examples[i]
        n_prompt = old_ex["labels"].index(next(lab for lab in old_ex["labels"] if lab != -100))
        prompt = old_ex["input_ids"][:n_prompt]
        cont = _reference(teacher, prompt, 8)
        assert new_ex["input_ids"] == prompt + cont
        assert new_ex["labels"] == [-100] * len(prompt) + cont
    assert info["new_tokens_per_prompt"] == 8 and info["prompts"] == len(data.train) and info["greedy"] is True
    assert info["generated_tokens"] == sum(len(e["input_ids"]) - e["labels"].count(-100) for e in new.train.examples)
    assert info["wall_time_s"] >= 0 and "tokens_per_s" in info


# ---- (b) labels -----------------------------------------------------------------------------------------------------

def test_text_windows_prompt_is_the_window_start_and_only_generated_tokens_are_targets():
    teacher = tiny_model("llama")
    data = _data(n_windows=6, seq_len=16, eval_size=2)
    new, info = self_distill_data(teacher, ToyTokenizer(), data, _config(6, self_distill_prompt_len=5))
    assert new.eval is data.eval and info["prompt_len"] == 5
    batch = new.collator()([new.train[i] for i in range(len(new.train))])
    for j in range(len(new.train)):
        window = data.train[j]["input_ids"].tolist()
        n = int(batch["attention_mask"][j].sum())
        labels = batch["labels"][j].tolist()
        assert batch["input_ids"][j, :5].tolist() == window[:5]
        assert labels[:5] == [-100] * 5, "no loss on the prompt"
        assert labels[n:] == [-100] * (len(labels) - n), "no loss on padding"
        assert labels[5:n] == batch["input_ids"][j, 5:n].tolist() and n > 5, "loss on every generated token"
        assert labels[5:n] == _reference(teacher, window[:5], 6)


def test_deterministic_and_sampling_is_seeded():
    teacher = tiny_model("llama")
    data = _data(n_windows=4, seq_len=16)
    a, _ = self_distill_data(teacher, ToyTokenizer(), data, _config(6))
    b, _ = self_distill_data(teacher, ToyTokenizer(), data, _config(6))
    assert a.train.examples == b.train.examples
    s1, i1 = self_distill_data(teacher, ToyTokenizer(), data, _config(6, self_distill_sample=True, seed=3))
    s2, _ = self_distill_data(teacher, ToyTokenizer(), data, _config(6, self_distill_sample=True, seed=3))
    assert s1.train.examples == s2.train.examples and i1["greedy"] is False


def test_generation_batch_is_its_own_option_and_does_not_change_the_data():
    """The teacher continues ``self_distill_batch_size`` prompts at a time whatever the training batch is; greedy
    continuations of left-padded batches are the same data at any generation batch size."""
    teacher = tiny_model("llama")
    data = _data(n_windows=7, seq_len=16)
    sizes = []
    original = teacher.generate

    def generate(*a, **k):
        sizes.append(int(k["input_ids"].shape[0]))
        return original(*a, **k)

    teacher.generate = generate
    one, i1 = self_distill_data(teacher, ToyTokenizer(), data, _config(6, batch_size=4, self_distill_batch_size=1))
    n = len(data.train)
    assert 1 < n <= 32 and sizes == [1] * n and i1["batch_size"] == 1
    sizes.clear()
    big, i32 = self_distill_data(teacher, ToyTokenizer(), data, _config(6, batch_size=4))
    assert sizes == [n] and i32["batch_size"] == 32, "default: 32 prompts together, not the training batch of 4"
    assert one.train.examples == big.train.examples
    for bad in (0, -2, 1.5, True):
        with pytest.raises(StreamlineError, match="self_distill_batch_size"):
            self_distill_data(teacher, ToyTokenizer(), data, _config(6, self_distill_batch_size=bad))


def test_heal_api_trains_on_self_distilled_data_with_lora_and_needs_a_teacher():
    teacher = tiny_model("llama")
    student = copy.deepcopy(teacher)
    data = _data(n_windows=8, seq_len=16, eval_size=2)
    with pytest.raises(StreamlineError, match="^teacher: config.self_distill needs the dense model"):
        heal(copy.deepcopy(student), ToyTokenizer(), data, "partial:1", self_distill=4, self_distill_prompt_len=6,
             max_steps=1, progress=False)
    result = heal(student, ToyTokenizer(), data, "lora:4", teacher=teacher, self_distill=4,
                  self_distill_prompt_len=6, max_steps=2, learning_rate=1e-3, batch_size=2, progress=False)
    rec = result.record
    # 2 steps x 2 < one epoch: continuations only for the 4 examples training sees
    assert len(data.train) > 4 and rec["self_distill"]["prompts"] == 4 and rec["global_step"] == 2
    assert rec["data"]["eval_examples"] == 2 and rec["data"]["self_distill"] is True
    # a token budget below one epoch: prompts for the budget at full length (6 + 4 = 10 tokens), nothing more
    # generated, one pass over their continuations, and the record keeps the budget as given
    budget = heal(copy.deepcopy(teacher), ToyTokenizer(), data, "partial:1", teacher=teacher, self_distill=4,
                  self_distill_prompt_len=6, budget_tokens=40, batch_size=2, progress=False).record
    assert budget["self_distill"]["prompts"] == 4 and budget["global_step"] == 2 and budget["budget_tokens"] == 40
    assert 0 < budget["train_tokens"] <= 40
    # option off: no self_distill block, and the record is as before
    off = heal(copy.deepcopy(teacher), ToyTokenizer(), data, "partial:1", max_steps=1, progress=False)
    assert "self_distill" not in off.record and "self_distill" not in off.record["data"]


# ---- (c)-(e) the command line -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pruned(stories_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sd") / "pruned"
    assert main(["prune", "--model", str(stories_dir), "--layers", "1", "--output", str(out)]) == 0
    return out


def test_cli_without_teacher_is_one_line_exit_2_and_writes_nothing(pruned, text_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "healed"
    assert main(["heal", "--model", str(pruned), "--data", str(text_file), "--self-distill", "8",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--teacher" in err and "--self-distill" in err
    assert not out.exists() and not (tmp_path / "healed.training").exists()


def test_cli_partial_self_distill_records_the_cost(pruned, stories_dir, text_file, tmp_path):  # noqa: F811
    out = tmp_path / "healed"
    assert main(["heal", "--model", str(pruned), "--teacher", str(stories_dir), "--data", str(text_file),
                 "--method", "partial", "--last-k", "1", "--self-distill", "8", "--max-steps", "2", "--seq-len", "64",
                 "--eval-size", "2", "--learning-rate", "1e-3", "--output", str(out)]) == 0
    record = json.loads((out / "streamline_plan.json").read_text())["healing"][-1]
    sd = record["self_distill"]
    assert sd["new_tokens_per_prompt"] == 8 and sd["greedy"] is True and sd["prompts"] == record["data"]["train_examples"]
    assert sd["batch_size"] == 32
    assert 0 < sd["generated_tokens"] <= 8 * sd["prompts"]
    assert sd["wall_time_s"] >= 0 and (sd["tokens_per_s"] is None or sd["tokens_per_s"] > 0)
    assert record["global_step"] == 2 and (out / "model.safetensors").is_file()


def test_cli_distill_with_self_distill_loads_the_teacher_once(pruned, stories_dir, text_file, tmp_path,  # noqa: F811
                                                              monkeypatch):
    import hf_streamline.loading as loading

    calls = []
    original = loading.load_model_and_tokenizer

    def load(spec, *a, **k):
        calls.append(str(spec))
        return original(spec, *a, **k)

    monkeypatch.setattr(loading, "load_model_and_tokenizer", load)
    out = tmp_path / "healed"
    assert main(["heal", "--model", str(pruned), "--teacher", str(stories_dir), "--data", str(text_file),
                 "--method", "distill", "--last-k", "1", "--self-distill", "6", "--max-steps", "2", "--seq-len", "64",
                 "--eval-size", "0", "--output", str(out)]) == 0
    assert calls.count(str(stories_dir)) == 1, calls
    record = json.loads((out / "streamline_plan.json").read_text())["healing"][-1]
    assert record["method"] == "distill:partial:1" and record["self_distill"]["new_tokens_per_prompt"] == 6
