"""Healing methods on tiny random models: which parameters train, tied embeddings, LoRA save/reload/merge, data,
bad input."""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest
import torch

from hf_streamline import StreamlineError
from hf_streamline.healing import (HealingConfig, HealingDataConfig, embeddings_tied, heal, load_healing_data,
                                   parse_method_spec, plan_for, resolve_lora_targets, save_healed)
from hf_streamline.healing.base import count_parameters
from hf_streamline.healing.data import ALPACA_PROMPT_NO_INPUT, tokenize_instruction
from tiny_models import tiny_model


class ToyTokenizer:
    """Whitespace-free byte tokenizer over the tiny models' 128-token vocabulary."""

    pad_token_id, eos_token_id, bos_token_id = 0, 2, 1
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        ids = [3 + (b % 125) for b in text.encode("utf-8")]
        return type("Enc", (), {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids})()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many tiny steps; on a shared 2-core machine one thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n_windows=12, seq_len=16, eval_size=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = ["".join(chr(97 + int(x)) for x in torch.randint(0, 26, (seq_len * n_windows + 40,), generator=g))]
    return load_healing_data(ToyTokenizer(), HealingDataConfig(source=text, seq_len=seq_len, eval_size=eval_size))


def _tied_llama(seed=0):
    from transformers import AutoModelForCausalLM

    from tiny_models import tiny_config

    cfg = tiny_config("llama", 4)
    cfg.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    assert embeddings_tied(model)
    return model


FAST = dict(max_steps=3, learning_rate=1e-2, batch_size=4, progress=False)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- specs --------------------------------------------------------------------------------------------------------

def test_method_specs():
    assert parse_method_spec("partial:3") == {"method": "partial", "last_k": 3}
    assert parse_method_spec("lora:8") == {"method": "lora", "lora_r": 8}
    assert parse_method_spec("distill:lora") == {"method": "distill", "distill_subset": "lora"}
    assert parse_method_spec("distill:partial:1") == {"method": "distill", "distill_subset": "partial", "last_k": 1}
    with pytest.raises(StreamlineError, match="healing method 'prune' is unknown"):
        parse_method_spec("prune")
    with pytest.raises(StreamlineError, match="'x' is not an integer"):
        parse_method_spec("partial:x")


# ---- partial ------------------------------------------------------------------------------------------------------

def test_partial_untie_trains_exactly_head_norm_and_last_k():
    model = _tied_llama()
    before = _snapshot(model)
    emb = model.get_input_embeddings().weight.detach().clone()
    result = heal(model, ToyTokenizer(), _data(), "partial:2", tied_policy="untie", **FAST)
    healed = result.model
    assert healed is model and not embeddings_tied(healed)
    assert healed.config.tie_word_embeddings is False
    assert torch.equal(healed.get_input_embeddings().weight, emb), "the input embedding must never change (untie)"
    trained_prefixes = ("model.layers.2.", "model.layers.3.", "model.norm.")
    for name, p in healed.named_parameters():
        if name == "lm_head.weight":
            assert not torch.equal(p, emb), "the untied lm_head trains"
        elif name.startswith(trained_prefixes):
            assert not torch.equal(p, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(p, before[name]), f"{name} must stay bit-identical"
    rec = result.record
    assert rec["tied_policy"] == "untie" and "unchanged" in rec["input_embedding"]
    assert rec["trained_modules"] == ["lm_head", "final_norm", "model.layers.2", "model.layers.3"]
    expected = sum(p.numel() for n, p in healed.named_parameters() if n == "lm_head.weight" or n.startswith(trained_prefixes))
    assert rec["trainable_parameters"] == expected
    assert rec["parameters_after"] == rec["parameters_before"] + emb.numel()  # lm_head now has its own matrix


def test_partial_train_shared_changes_the_input_embedding_and_says_so():
    model = _tied_llama()
    before = _snapshot(model)
    result = heal(model, ToyTokenizer(), _data(), HealingConfig(method="partial", last_k=0, tied_policy="train-shared"),
                  **FAST)
    assert embeddings_tied(result.model)
    assert not torch.equal(result.model.get_input_embeddings().weight, before["model.embed_tokens.weight"])
    assert "TRAINED" in result.record["input_embedding"] and result.record["tied_policy"] == "train-shared"
    for name, p in result.model.named_parameters():
        if name.startswith("model.layers."):
            assert torch.equal(p, before[name])


def test_partial_k0_on_untied_model_and_plain_checkpoint_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("qwen2", 3)
    before = _snapshot(model)
    result = heal(model, ToyTokenizer(), _data(), "partial:0", **FAST)
    for name, p in result.model.named_parameters():
        if name.startswith("model.layers."):
            assert torch.equal(p, before[name])
        if name in ("lm_head.weight", "model.norm.weight"):
            assert not torch.equal(p, before[name])
    plan = plan_for(result.model, None, "tiny-qwen2")
    out = save_healed(result, None, plan, tmp_path / "healed")
    saved = json.loads((out / "streamline_plan.json").read_text())
    assert saved["healing"][0]["method"] == "partial:0" and saved["healing"][0]["trainable_parameters"] > 0
    assert (out / "README.md").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(3, 128, (2, 10))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, result.model(ids).logits, atol=1e-5)


def test_untied_partial_model_reloads_as_plain_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    result = heal(_tied_llama(), ToyTokenizer(), _data(), "partial:1", tied_policy="untie", **FAST)
    out = save_healed(result, None, plan_for(result.model, None, "tiny"), tmp_path / "h")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert not embeddings_tied(reloaded)
    assert torch.equal(reloaded.lm_head.weight, result.model.lm_head.weight)
    assert torch.equal(reloaded.model.embed_tokens.weight, result.model.model.embed_tokens.weight)


def test_last_k_larger_than_remaining_layers():
    with pytest.raises(StreamlineError, match="^last_k=5: larger than the 4 decoder layers"):
        heal(tiny_model("llama", 4), ToyTokenizer(), _data(), "partial:5", **FAST)


def test_last_k_cut_is_every_layer_above_the_first_removed_one():
    from hf_streamline.healing.partial import parse_last_k, resolve_last_k
    from hf_streamline.plan import StreamlinePlan

    plan = StreamlinePlan(base_model="m", num_layers_before=30, removed_layers=[26, 12, 13, 14, 15, 16, 17, 18])
    assert resolve_last_k("cut", plan) == 10  # 22 layers remain, 12 of them below the cut
    assert resolve_last_k(" Cut ", plan) == 10 and resolve_last_k(3, plan) == 3 and resolve_last_k("2", plan) == 2
    # cut+N: also the N layers just below the cut (whose output the removed layers used to read), at most all 22
    assert resolve_last_k("cut+2", plan) == 12 and resolve_last_k("CUT + 0", plan) == 10
    assert resolve_last_k("cut+40", plan) == 22
    assert parse_last_k("cut+0") == "cut" and parse_last_k("cut+2") == "cut+2"
    with pytest.raises(StreamlineError, match="removes none"):
        resolve_last_k("cut", StreamlinePlan(base_model="m", num_layers_before=30))
    for bad in ("top", "cut+", "cut-2", "cut+x"):
        with pytest.raises(StreamlineError, match=rf"last_k='{re.escape(bad)}': give a number of layers, 'cut'"):
            parse_last_k(bad)
    # the Python API cannot know the cut without the plan: one clear line, before any training
    for spec in ("cut", "cut+1"):
        with pytest.raises(StreamlineError, match="needs the pruned model's plan"):
            heal(tiny_model("llama", 4), ToyTokenizer(), _data(), HealingConfig(method="partial", last_k=spec),
                 **FAST)


def test_budget_tokens_sets_the_number_of_steps():
    result = heal(tiny_model("llama", 2), ToyTokenizer(), _data(seq_len=16), "partial:0", budget_tokens=150,
                  batch_size=2, learning_rate=1e-3, progress=False)
    assert result.record["max_steps"] == 5  # ceil(150 / (2 * 16))
    assert result.record["train_tokens"] == 5 * 2 * 16


def test_a_budget_shorter_than_an_epoch_trains_on_a_seeded_subset_seen_once():
    data = _data(n_windows=20, seq_len=16)
    result = heal(tiny_model("llama", 2), ToyTokenizer(), data, "partial:0", budget_tokens=150, batch_size=2,
                  learning_rate=1e-3, progress=False)
    described = result.record["data"]
    n = len(data.train)
    assert n > 10 and described["budget_subset"] == {"examples": 10, "of": n} and described["train_examples"] == 10
    a, b = data.take(10, seed=0), data.take(10, seed=0)
    assert torch.equal(a.train.input_ids, b.train.input_ids) and len(a.train) == 10
    rows = {tuple(r.tolist()) for r in data.train.input_ids}
    assert all(tuple(r.tolist()) in rows for r in a.train.input_ids)  # examples of the data, each once
    assert len({tuple(r.tolist()) for r in a.train.input_ids}) == 10
    assert data.take(n) is data and data.take(99) is data  # a whole epoch or more: the data as it is


def test_several_sources_are_pooled_and_shuffled(tmp_path):
    from hf_streamline.healing import load_pooled_healing_data

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a" * 16 * 25)
    b.write_text("b" * 16 * 4)
    cfg = HealingDataConfig(seq_len=16, eval_size=2, seed=0)
    data = load_pooled_healing_data(ToyTokenizer(), cfg, [str(a), str(b)])
    assert data.info["sources"] == {str(a): 25, str(b): 4}
    assert len(data.train) == 27 and len(data.eval) == 2 and data.describe()["source"] == [str(a), str(b)]
    firsts = [int(r[0]) for r in data.train.input_ids]
    assert set(firsts) == {3 + ord("a") % 125, 3 + ord("b") % 125}
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)  # shuffled, not one source then the other
    again = load_pooled_healing_data(ToyTokenizer(), cfg, [str(a), str(b)])
    assert torch.equal(data.train.input_ids, again.train.input_ids)
    one = load_pooled_healing_data(ToyTokenizer(), cfg, [str(a)])
    assert len(one.train) == 23 and one.describe()["source"] == str(a)
    alpaca = tmp_path / "i.jsonl"
    alpaca.write_text(json.dumps({"instruction": "hi", "input": "", "output": "hi"}) + "\n")
    with pytest.raises(StreamlineError, match=r"^sources: mix plain text and Alpaca instructions"):
        load_pooled_healing_data(ToyTokenizer(), HealingDataConfig(seq_len=200, eval_size=0), [str(a), str(alpaca)])


def test_best_checkpoint_is_loaded():
    from hf_streamline.training import StreamlineTrainer, StreamlineTrainingArguments

    data = _data(n_windows=20, eval_size=4)
    result = heal(tiny_model("llama", 2), ToyTokenizer(), data, "partial:1", max_steps=6, learning_rate=5e-2,
                  batch_size=4, eval_steps=2, progress=False)
    rec = result.record
    assert rec["eval_loss_before"] is not None and rec["eval_loss_best"] is not None
    assert rec["best_checkpoint_loaded"] and rec["best_step"] in (2, 4, 6)
    args = StreamlineTrainingArguments(output_dir="/tmp/unused-healing-eval", use_cpu=True, objective="lm",
                                       per_device_eval_batch_size=4, report_to="none")
    trainer = StreamlineTrainer(result.model, args, objective="lm", trainable=[r"lm_head"], eval_dataset=data.eval,
                                data_collator=data.collator())
    assert trainer.evaluate()["eval_loss"] == pytest.approx(rec["eval_loss_best"], rel=1e-5)


# ---- LoRA ---------------------------------------------------------------------------------------------------------

def test_lora_default_targets_are_every_linear_of_the_decoder_layers():
    model = tiny_model("llama", 2)
    names = resolve_lora_targets(model)
    assert len(names) == 2 * 7 and all(n.startswith("model.layers.") for n in names)
    gpt2 = tiny_model("gpt2", 2)  # Conv1D linears
    assert {n.rsplit(".", 1)[1] for n in resolve_lora_targets(gpt2)} == {"c_attn", "c_proj", "c_fc"}


def test_lora_target_that_matches_nothing():
    with pytest.raises(StreamlineError, match=r"LoRA target\(s\) \['qq_proj'\] match no linear module.*q_proj"):
        heal(tiny_model("llama", 2), ToyTokenizer(), _data(), HealingConfig(method="lora", lora_targets=["q_proj", "qq_proj"]),
             **FAST)


def _trained_lora(tmp_path, arch="llama", targets=None):
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / "pruned"
    tiny_model(arch, 3).save_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    frozen = _snapshot(model)
    cfg = HealingConfig(method="lora", lora_r=4, lora_targets=targets)
    result = heal(model, ToyTokenizer(), _data(), cfg, model_path=base_dir, merge=False, **FAST)
    return base_dir, frozen, result


def test_lora_adapter_saves_reloads_with_peft_and_merges_into_equal_plain_checkpoint(tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from hf_streamline.healing import HealingResult, merge_lora

    base_dir, frozen, result = _trained_lora(tmp_path)
    adapted = result.model
    assert not result.merged and result.record["target_modules"] == 3 * 7
    ids = torch.randint(3, 128, (2, 12))
    with torch.no_grad():
        adapted_logits = adapted(input_ids=ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits
    assert not torch.allclose(adapted_logits, base_logits, atol=1e-4), "training moved the adapter"
    base_params = dict(adapted.get_base_model().named_parameters())
    for name, p in frozen.items():  # the base weights stay bit-identical (peft wraps them as base_layer)
        key = name if name in base_params else name.rsplit(".", 1)[0] + ".base_layer." + name.rsplit(".", 1)[1]
        assert torch.equal(base_params[key], p), name

    out = save_healed(result, None, plan_for(adapted, base_dir), tmp_path / "adapter", base_model_path=base_dir)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir.absolute())
    assert json.loads((out / "streamline_plan.json").read_text())["healing"][0]["type"] == "lora"
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, adapted_logits, atol=1e-5)

    merged = merge_lora(adapted)
    plain = save_healed(HealingResult(merged, dict(result.record, merged=True)), None, plan_for(merged, base_dir),
                        tmp_path / "merged")
    assert not (plain / "adapter_config.json").exists()
    reloaded_plain = AutoModelForCausalLM.from_pretrained(plain).eval()
    assert not any("lora" in n for n, _ in reloaded_plain.named_parameters())
    with torch.no_grad():
        assert torch.allclose(reloaded_plain(input_ids=ids).logits, adapted_logits, atol=1e-5)


def test_lora_with_explicit_targets_and_without_base_folder(tmp_path):
    from peft import AutoPeftModelForCausalLM

    model = tiny_model("llama", 2)
    result = heal(model, ToyTokenizer(), _data(), HealingConfig(method="lora", lora_r=2, lora_targets=["q_proj", "v_proj"]),
                  merge=False, **FAST)
    assert result.record["target_modules"] == 4 and result.record["target_names"] == ["q_proj", "v_proj"]
    out = save_healed(result, None, plan_for(result.model, None, "tiny"), tmp_path / "adapter")
    assert (out / "base" / "config.json").is_file()  # the in-memory base is kept beside the adapter
    ids = torch.randint(3, 128, (1, 9))
    with torch.no_grad():
        want = result.model(input_ids=ids).logits
        got = AutoPeftModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_lora_on_streamline_model_merges_into_streamline_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_streamline.modeling import StreamlineForCausalLM
    from hf_streamline.replacement import replace_block

    model, _ = replace_block(tiny_model("llama", 4), 1, 2, "mlp")
    assert isinstance(model, StreamlineForCausalLM)
    names = resolve_lora_targets(model)
    assert any(".layers.1.gate_proj" in n for n in names), "the replacement MLP's linears get adapters too"
    result = heal(model, ToyTokenizer(), _data(), HealingConfig(method="lora", lora_r=2), merge=True, **FAST)
    assert isinstance(result.model, StreamlineForCausalLM)
    ids = torch.randint(3, 128, (2, 8))
    with torch.no_grad():
        want = result.model(input_ids=ids).logits
    out = save_healed(result, None, plan_for(result.model, None, "tiny"), tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(reloaded, StreamlineForCausalLM)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, want, atol=1e-5)


# ---- QLoRA: the clear error ------------------------------------------------------------------------------------

def test_qlora_without_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(StreamlineError, match="qlora needs a 4-bit base: bitsandbytes is not usable here"):
        heal(tiny_model("llama", 2), ToyTokenizer(), _data(), "qlora", **FAST)


# ---- distill ------------------------------------------------------------------------------------------------------

def test_distill_needs_a_teacher_of_the_same_vocabulary():
    with pytest.raises(StreamlineError, match="^teacher: method 'distill' needs the dense model"):
        heal(tiny_model("llama", 2), ToyTokenizer(), _data(), "distill:partial:1", **FAST)
    from transformers import AutoModelForCausalLM

    from tiny_models import tiny_config

    cfg = tiny_config("llama", 2)
    cfg.vocab_size = 64
    with pytest.raises(StreamlineError, match="^teacher: predicts over 64 tokens"):
        heal(tiny_model("llama", 2), ToyTokenizer(), _data(), "distill:partial:1",
             teacher=AutoModelForCausalLM.from_config(cfg), **FAST)


def test_distill_on_lora_subset_trains_adapters_against_the_teacher():
    teacher = tiny_model("llama", 4, seed=1)
    student = tiny_model("llama", 3, seed=2)
    result = heal(student, ToyTokenizer(), _data(), HealingConfig(method="distill", distill_subset="lora", lora_r=2,
                                                                 kl_temperature=2.0, lm_weight=0.5),
                  teacher=teacher, **FAST)
    rec = result.record
    assert rec["method"] == "distill:lora:2" and rec["objective"] == "lm+kl" and rec["kl_temperature"] == 2.0
    assert rec["target_modules"] == 3 * 7 and rec["merged"]
    assert rec["train_loss"] is not None and rec["train_loss"] > 0


# ---- data ---------------------------------------------------------------------------------------------------------

def _alpaca(tmp_path, rows, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(rows) if name.endswith(".json") else "\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_instruction_loss_is_on_the_response_only(tmp_path):
    tok = ToyTokenizer()
    ex = tokenize_instruction({"instruction": "Say hi", "input": "", "output": "hi!"}, tok, cutoff=512)
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction="Say hi")
    n_prompt = len(tok(prompt).input_ids)
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id and len(ex["input_ids"]) == n_prompt + 3 + 1
    rows = [{"instruction": f"task {i}", "input": "x" if i % 2 else "", "output": "answer " * (i % 3 + 1)} for i in range(40)]
    data = load_healing_data(tok, HealingDataConfig(source=_alpaca(tmp_path, rows, "d.jsonl"), seq_len=256))
    assert data.kind == "alpaca" and len(data.eval) == 2 and len(data.train) == 38
    batch = data.collator()([data.train[0], data.train[1]])
    assert batch["labels"].shape == batch["input_ids"].shape
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == -100).all()
    # a cutoff inside the prompt leaves nothing to learn: such examples are dropped and counted
    short = load_healing_data(tok, HealingDataConfig(source=_alpaca(tmp_path, rows), seq_len=180, eval_size=0))
    assert short.info["dropped_examples"] == 20 and len(short.train) == 20


def test_instruction_data_without_the_expected_fields(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "response": "d"}]
    with pytest.raises(StreamlineError, match=r"record 1 has no 'output' field .*'instruction', 'input' \(optional\) and 'output'"):
        load_healing_data(ToyTokenizer(), HealingDataConfig(source=_alpaca(tmp_path, rows), format="alpaca"))
    with pytest.raises(StreamlineError, match="cannot tell the format.*'instruction'"):
        load_healing_data(ToyTokenizer(), HealingDataConfig(source=_alpaca(tmp_path, [{"question": "q", "answer": "a"}])))
    with pytest.raises(StreamlineError, match="field 'output' must be a string"):
        load_healing_data(ToyTokenizer(), HealingDataConfig(source=_alpaca(tmp_path, [{"instruction": "a", "output": 3}])))


def test_text_data_windows_and_validation_split():
    data = _data(n_windows=40, seq_len=16)
    assert data.kind == "text" and data.tokens_per_example == 16
    data = load_healing_data(ToyTokenizer(), HealingDataConfig(source=["ab" * 400], seq_len=16))
    assert len(data.eval) == 2 and len(data.train) == 48
    with pytest.raises(StreamlineError, match="no such file"):
        load_healing_data(ToyTokenizer(), HealingDataConfig(source="/nonexistent/file.txt"))


def test_iterative_goal_takes_every_target_kind_like_one_shot_selection():
    """Iterative prune-and-heal turns a target into a layer count with the selection's own rule (a parameter
    fraction included, which it used to refuse)."""
    from hf_streamline.architecture import layer_parameter_counts
    from hf_streamline.healing.iterative import _goal
    from hf_streamline.selection import Target, target_layer_count

    model = tiny_model("llama", num_layers=6)
    lp, total = layer_parameter_counts(model), sum(p.numel() for p in model.parameters())
    assert _goal(2, model) == 2 and _goal(Target(layers=3), model) == 3 and _goal(Target(ratio=0.5), model) == 3
    share = 2.5 * lp[0] / total  # needs three layers' worth of parameters
    assert _goal(Target(param_ratio=share), model) == target_layer_count(Target(param_ratio=share), lp, total) == 3
    with pytest.raises(StreamlineError, match="must be in 1..5"):
        _goal(Target(layers=6), model)


def test_freeze_lm_head_trains_the_last_layers_only_and_keeps_a_tied_model_tied_and_its_size():
    from hf_streamline.pruning import remove_layers

    dense = _tied_llama(seed=1)
    student = copy.deepcopy(dense)
    remove_layers(student, [2])
    before, size = _snapshot(student), count_parameters(student)
    cfg = HealingConfig(method="distill", last_k=1, kd_top_k=16, freeze_lm_head=True)
    result = heal(student, ToyTokenizer(), _data(n_windows=20), cfg, teacher=dense, **FAST)
    after = _snapshot(result.model)
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith(("model.layers.2.", "model.norm.")) for n in changed), changed
    assert embeddings_tied(result.model) and count_parameters(result.model) == size
    rec = result.record
    assert rec["lm_head"] == "frozen" and rec["trained_modules"] == ["final_norm", "model.layers.2"]
    assert "tied_policy" not in rec and rec["input_embedding"] == "unchanged"
    # nothing below layer 2 trains, and layers 0-1 are the dense model's: training reads their output from the cache
    assert rec["kd_cache"]["prefix"]["used"] and rec["kd_cache"]["prefix"]["layers_skipped"] == 2


@pytest.mark.parametrize("spec", ["partial:3", "lora", "lora:8", "qlora", "qlora:4", "distill:partial:1", "distill:lora",
                                  "distill:lora:8"])
def test_each_method_reads_its_own_spec_and_writes_it_back(spec):
    """Spec parsing lives on the method (parse_options / spec), and the default rank is read from HealingConfig."""
    from hf_streamline.healing.base import HealingConfig, get_healing_method

    assert get_healing_method(HealingConfig().with_spec(spec)).spec() == spec
    with pytest.raises(StreamlineError, match="unexpected part"):
        parse_method_spec(spec + (":1" if spec.count(":") < (2 if spec.startswith("distill") else 1) else "") + ":9")
