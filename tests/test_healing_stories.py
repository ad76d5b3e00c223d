"""Healing on the real stories260K model: every method lowers held-out perplexity after a layer is removed;
QLoRA; iterative prune-heal; the heal and compare-healing commands."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from hf_streamline.cli import main
from hf_streamline.healing import HealingConfig, HealingDataConfig, bitsandbytes_problem, heal, load_healing_data
from hf_streamline.perplexity import evaluate_perplexity
from hf_streamline.pruning import remove_layers
from test_healing import _one_thread  # noqa: F401 - the one-thread fixture

REMOVED = 1  # removing layer 1 of 5 raises held-out perplexity from 3.8 to about 21
STEPS = 8
METHODS = {"partial:0": 1e-3, "partial:1": 1e-3, "partial:3": 1e-3, "lora": 3e-3, "qlora": 3e-3, "distill": 1e-3}


@pytest.fixture(scope="module")
def stories(stories_dir, data_dir):
    from hf_streamline.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    text = (data_dir / "text" / "stories260k_samples.txt").read_text()
    docs = [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
    return model, tok, docs[:-1], docs[-1]  # train on four stories, hold the fifth out


@pytest.fixture(scope="module")
def data(stories):
    _, tok, train_docs, _ = stories
    return load_healing_data(tok, HealingDataConfig(source=train_docs, seq_len=64, eval_size=0))


def _ppl(model, tok, text):
    return evaluate_perplexity(model, tok, text, seq_len=128, progress=False)


@pytest.mark.parametrize("spec", list(METHODS))
def test_each_method_lowers_held_out_perplexity_after_removing_a_layer(stories, data, spec):
    dense, tok, _, held_out = stories
    if spec == "qlora" and bitsandbytes_problem() is not None:
        pytest.fail(f"qlora: {bitsandbytes_problem()} (bitsandbytes is in the test extra)")
    pruned = copy.deepcopy(dense)
    remove_layers(pruned, [REMOVED])
    removed_ppl = _ppl(pruned, tok, held_out)
    assert removed_ppl > 2 * _ppl(dense, tok, held_out)
    result = heal(pruned, tok, data, spec, teacher=dense, max_steps=STEPS, learning_rate=METHODS[spec], batch_size=4,
                  progress=False)
    healed_ppl = _ppl(result.model, tok, held_out)
    assert healed_ppl < removed_ppl, f"{spec}: {removed_ppl:.3f} -> {healed_ppl:.3f}"
    assert result.record["global_step"] == STEPS and result.record["train_tokens"] == STEPS * 4 * 64


def test_qlora_trains_on_a_4bit_base_and_merges_into_the_full_precision_model(stories, data, tmp_path):
    problem = bitsandbytes_problem()
    if problem is not None:
        pytest.fail(f"{problem} (bitsandbytes is in the test extra)")
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from hf_streamline.healing import plan_for, save_healed

    dense, tok, _, _ = stories
    pruned = copy.deepcopy(dense)
    remove_layers(pruned, [REMOVED])
    base_dir = tmp_path / "pruned"
    pruned.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    frozen = {n: p.detach().clone() for n, p in pruned.named_parameters()}
    result = heal(pruned, tok, data, HealingConfig(method="qlora", lora_r=4), model_path=base_dir, merge=False,
                  max_steps=4, learning_rate=3e-3, progress=False)
    rec = result.record
    assert rec["quantization"].startswith("bitsandbytes 4-bit nf4") and not result.merged
    for name, p in pruned.named_parameters():  # the full-precision base is not changed by training
        if "lora_" not in name:  # (it now carries the trained adapter on top)
            assert torch.equal(p, frozen[name.replace(".base_layer", "")]), name
    out = save_healed(result, tok, plan_for(pruned, base_dir), tmp_path / "adapter", base_model_path=base_dir)
    ids = torch.tensor([tok("Once upon a time there was").input_ids])
    with torch.no_grad():
        adapted = result.model(input_ids=ids).logits
        reloaded = AutoPeftModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
        assert torch.allclose(reloaded, adapted, atol=1e-5)
        merged = result.model.merge_and_unload()(input_ids=ids).logits
        assert torch.allclose(merged, adapted, atol=1e-4)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits, adapted, atol=1e-4)


def test_iterative_prune_and_heal_reaches_the_target_and_records_every_step(stories, data):
    from hf_streamline.calibration import build_calibration
    from hf_streamline.healing import iterative_prune_and_heal
    from hf_streamline.plan import StreamlinePlan, apply_plan

    dense, tok, train_docs, held_out = stories
    calib = build_calibration(tok, train_docs, n_samples=4, seq_len=64)
    config = HealingConfig(method="partial", last_k=1, max_steps=3, learning_rate=1e-3, progress=False)
    model, plan = iterative_prune_and_heal(copy.deepcopy(dense), tok, data, config, remove=2, step=1,
                                           metric="block_influence", calibration=calib, eval_text=held_out,
                                           progress=False)
    from hf_streamline.architecture import num_layers

    assert num_layers(model) == 3 and plan.num_layers_after == 3
    assert [s["step"] for s in plan.steps] == [1, 2] and all(len(s["removed"]) == 1 for s in plan.steps)
    assert sorted(sum((s["removed"] for s in plan.steps), [])) == plan.removed_layers
    assert [h["step"] for h in plan.healing] == [1, 2] and all(h["method"] == "partial:1" for h in plan.healing)
    assert all(s["perplexity_after_healing"] < s["perplexity_after_removal"] for s in plan.steps)
    assert plan.steps[1]["scores"]["per_layer"] and len(plan.steps[1]["scores"]["per_layer"]) == 4  # re-scored
    assert plan.extra["healing_schedule"]["mode"] == "iterative"
    # the plan's structure reproduces the layer layout of the healed model
    again = apply_plan(copy.deepcopy(dense), StreamlinePlan.from_json(plan.to_json()))
    assert num_layers(again) == 3


def test_iterative_refuses_last_k_beyond_the_final_layer_count(stories, data):
    from hf_streamline import StreamlineError
    from hf_streamline.healing import iterative_prune_and_heal

    dense, tok, _, _ = stories
    with pytest.raises(StreamlineError, match="^config.last_k=4: larger than the 3 decoder layers left after "
                                              "removing 2"):
        iterative_prune_and_heal(copy.deepcopy(dense), tok, data, "partial:4", remove=2, metric="reverse_order",
                                 progress=False)


@pytest.fixture
def cli_setup(stories, stories_dir, tmp_path):
    """A training text, a held-out text and stories260K with layer 1 removed by the prune command."""
    _, _, train_docs, held_out = stories
    train = tmp_path / "train.txt"
    train.write_text("\n<|endoftext|>\n".join(train_docs))
    held = tmp_path / "held.txt"
    held.write_text(held_out)
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(stories_dir), "--layers", "1", "--output", str(pruned)]) == 0
    return str(train), held, pruned


def test_cli_heal_partial_and_lora_adapter(cli_setup, tmp_path, capsys):
    from peft import AutoPeftModelForCausalLM

    train, held, pruned = cli_setup
    out = tmp_path / "healed"
    assert main(["heal", "--model", str(pruned), "--data", train, "--method", "partial", "--last-k", "1",
                 "--max-steps", "4", "--seq-len", "64", "--learning-rate", "1e-3", "--eval-text", str(held),
                 "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "perplexity on" in text and "partial:1: trained" in text
    plan = json.loads((out / "streamline_plan.json").read_text())
    assert plan["removed_layers"] == [1] and plan["healing"][0]["method"] == "partial:1"
    assert plan["healing"][0]["perplexity"]["after"] < plan["healing"][0]["perplexity"]["before"]
    assert "partial" in (out / "README.md").read_text()
    adapter = tmp_path / "adapter"
    assert main(["heal", "--model", str(pruned), "--data", train, "--method", "lora", "--lora-r", "4",
                 "--max-steps", "2", "--seq-len", "64", "--output", str(adapter)]) == 0
    loaded = AutoPeftModelForCausalLM.from_pretrained(adapter)
    assert loaded.peft_config["default"].r == 4
    assert main(["heal", "--model", str(pruned), "--data", train, "--method", "lora", "--lora-targets", "nope",
                 "--max-steps", "2", "--seq-len", "64", "--output", str(tmp_path / "bad")]) == 2
    assert "['nope'] match no linear module" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["heal", "--model", str(pruned), "--data", train, "--last-k", "9", "--max-steps", "2",
                 "--seq-len", "64", "--output", str(tmp_path / "bad")]) == 2
    assert "--last-k 9: larger than the 4 decoder layers" in capsys.readouterr().err


def test_a_lora_adapter_folder_loads_and_evaluates_as_its_merged_model(cli_setup, tmp_path, capsys):
    """`heal --method lora` without --merge writes an adapter folder: every command that reads a model takes it as
    the base with the adapter merged in (what peft's merge_and_unload gives), and a base that moved is one line."""
    from peft import AutoPeftModelForCausalLM

    from hf_streamline.loading import inspect_model, load_model_and_tokenizer

    train, held, pruned = cli_setup
    adapter = tmp_path / "adapter"
    assert main(["heal", "--model", str(pruned), "--data", train, "--method", "lora", "--lora-r", "4",
                 "--learning-rate", "1e-2", "--max-steps", "2", "--seq-len", "64", "--output", str(adapter)]) == 0
    assert not (adapter / "config.json").exists()
    ids = torch.randint(3, 200, (1, 16), generator=torch.Generator().manual_seed(0))
    model, tok = load_model_and_tokenizer(str(adapter))
    want = AutoPeftModelForCausalLM.from_pretrained(adapter).merge_and_unload()(input_ids=ids).logits
    base = load_model_and_tokenizer(str(pruned))[0](input_ids=ids).logits
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, base, atol=1e-4)
    assert type(model).__name__ == "LlamaForCausalLM" and tok.pad_token is not None
    assert inspect_model(str(adapter)).num_hidden_layers == 4
    capsys.readouterr()
    assert main(["evaluate", "--model", str(adapter), "--ppl", f"held={held}", "--ppl-seq-len", "64", "--no-plots",
                 "--no-samples", "--no-speed", "--output", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "report.json").exists()
    # the base folder moved away: one line naming the adapter, its base and what to do
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(adapter), "--ppl", f"held={held}", "--output", str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a LoRA adapter whose base model" in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "ev2").exists()


def test_cli_compare_healing_writes_table_json_and_chart(cli_setup, stories_dir, data_dir, tmp_path):
    train, held, pruned = cli_setup
    out = tmp_path / "cmp"
    assert main(["compare-healing", "--model", str(pruned), "--teacher", str(stories_dir), "--data", train,
                 "--budget-tokens", "512", "--methods", "partial:0,lora,distill:partial:1", "--seq-len", "64",
                 "--ppl", f"stories={held}", "--tasks", str(data_dir / "eval" / "copa.jsonl"), "--limit", "4",
                 "--learning-rate", "1e-3", "--last-k", "cut", "--output", str(out)]) == 0
    report = json.loads((out / "comparison.json").read_text())
    # --last-k cut is resolved from the pruned folder's plan, as `heal` does: the layers above the first removed one
    removed = json.loads((pruned / "streamline_plan.json").read_text())["removed_layers"]
    assert report["healing"]["last_k"] == report["layers"] - min(removed)
    labels = [r["label"] for r in report["rows"]]
    assert labels == ["dense (teacher)", "pruned, no healing", "partial:0", "lora", "distill:partial:1"]
    rows = {r["label"]: r for r in report["rows"]}
    assert all(rows[m]["train_tokens"] == 512 for m in ("partial:0", "lora", "distill:partial:1"))
    assert rows["partial:0"]["trainable_parameters"] < rows["distill:partial:1"]["trainable_parameters"]
    assert all(r["tasks"]["copa"]["n"] == 4 for r in report["rows"])
    assert rows["dense (teacher)"]["perplexity"]["stories"] < rows["pruned, no healing"]["perplexity"]["stories"]
    md = (out / "comparison.md").read_text()
    assert "| Method | Layers | Trainable params" in md and "PPL stories" in md and "copa" in md
    assert (out / "comparison.png").stat().st_size > 10_000


def test_cli_heal_pools_several_data_sources(cli_setup, tmp_path):
    from hf_streamline.arguments.base import to_argv
    from hf_streamline.recipes.runner import stage_arguments
    from hf_streamline.recipes.schema import validate_recipe

    train, held, pruned = cli_setup
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps({"text": line}) + "\n" for line in Path(held).read_text().splitlines()
                              if line.strip()))
    out = tmp_path / "healed"
    assert main(["heal", "--model", str(pruned), "--data", train, str(second), "--method", "partial", "--last-k", "1",
                 "--max-steps", "2", "--seq-len", "64", "--eval-size", "2", "--output", str(out)]) == 0
    data = json.loads((out / "streamline_plan.json").read_text())["healing"][0]["data"]
    assert data["source"] == ["train.txt", "second.jsonl"]  # the plan keeps file names, not local paths
    assert set(data["sources"]) == {"train.txt", "second.jsonl"}
    assert all(n > 0 for n in data["sources"].values())
    # a recipe's list becomes the same arguments
    recipe = validate_recipe({"method": "remove", "remove": {"remove": 1}, "output": "o",
                              "heal": {"data": [train, str(second)]}})
    heal = stage_arguments("heal", recipe, recipe.data["heal"], str(pruned), calibration=False, output="h")
    assert heal.data == [train, str(second)] and to_argv(heal)[to_argv(heal).index("--data"):][:3] == \
        ["--data", train, str(second)]


def test_heal_pruned_resolves_the_cut_and_leaves_the_config_alone(cli_setup):
    """The policy of healing a pruned folder is a library call: `cut+1` becomes a layer count from the plan (recorded
    with its spec), the base-model size is estimated for tied_policy auto, the caller's config is not changed."""
    from hf_streamline import load_model_and_tokenizer
    from hf_streamline.healing import HealingConfig, HealingDataConfig, load_pooled_healing_data, plan_for
    from hf_streamline.healing.pruned import heal_pruned, healing_sources

    train, _, pruned = cli_setup
    model, tok = load_model_and_tokenizer(str(pruned))
    plan = plan_for(model, str(pruned))
    data = load_pooled_healing_data(tok, HealingDataConfig(seq_len=32, eval_size=0), [train])
    config = HealingConfig(method="partial", last_k="cut+1", max_steps=1, batch_size=2)
    result = heal_pruned(model, tok, data, config, plan)
    first = min(plan.removed_layers)
    assert result.record["last_k_cut"] == {"spec": "cut+1", "layers": plan.num_layers_after - first + 1}
    assert config.last_k == "cut+1" and config.base_parameters is None
    assert healing_sources(str(pruned)).adapter_base == str(pruned)
    assert healing_sources("org/model", dtype="bfloat16").model_path is None


@pytest.mark.parametrize("spec", ["partial:1", "lora"])
def test_training_args_reach_the_trainer_and_gradient_checkpointing_trains_the_same(stories, data, spec):
    """``training_args`` (TrainingArguments fields, as trl's configs take them): gradient checkpointing recomputes
    activations but must train exactly as without it -- the frozen layers below must not cut the gradient off."""
    dense, tok, _, _ = stories
    runs = {}
    for checkpointing in (False, True):
        pruned = copy.deepcopy(dense)
        remove_layers(pruned, [REMOVED])
        before = {n: p.detach().clone() for n, p in pruned.named_parameters()}
        result = heal(pruned, tok, data, spec, max_steps=3, learning_rate=1e-3, batch_size=4, progress=False,
                      merge=True, training_args={"gradient_checkpointing": checkpointing, "logging_steps": 1,
                                                 "max_grad_norm": 0.5})
        changed = [n for n, p in result.model.named_parameters() if not torch.equal(p.detach(), before[n])]
        runs[checkpointing] = ([e["loss"] for e in result.record["loss_curve"] if e.get("loss") is not None],
                               changed, result.model)
    (plain, changed, a), (ckpt, changed_ckpt, b) = runs[False], runs[True]
    assert len(plain) == 3 and plain == pytest.approx(ckpt, rel=1e-4)
    assert changed and changed == changed_ckpt  # the same parameters trained, the layers' included
    assert any(".layers." in n for n in changed)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(p, q, atol=1e-5), n


def test_training_args_that_the_config_sets_or_that_do_not_exist_are_refused(stories, data, cli_setup, tmp_path,
                                                                              capsys):
    from hf_streamline.errors import StreamlineError
    from hf_streamline.recipes import validate_recipe

    dense, tok, _, _ = stories
    with pytest.raises(StreamlineError, match=r"^config.training_args: 'learning_rate' is set by the healing run "
                                              r"itself; use learning_rate"):
        heal(copy.deepcopy(dense), tok, data, "partial:1", max_steps=1, training_args={"learning_rate": 1.0})
    with pytest.raises(StreamlineError, match="'gradient_checkpoint' is not a transformers.TrainingArguments field"):
        heal(copy.deepcopy(dense), tok, data, "partial:1", max_steps=1, training_args={"gradient_checkpoint": True})
    train, _, pruned = cli_setup
    out = tmp_path / "healed"
    assert main(["heal", "--model", str(pruned), "--data", train, "--max-steps", "1", "--training-arg", "bf17=true",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: --training-arg: 'bf17' is not a transformers.TrainingArguments field" in err and not out.exists()
    with pytest.raises(SystemExit):  # argparse's own one-line error
        main(["heal", "--model", str(pruned), "--data", train, "--training-arg", "no-equals-sign", "--output", str(out)])
    assert "--training-arg: 'no-equals-sign': expected KEY=VALUE" in capsys.readouterr().err
    # a recipe writes them as a mapping
    recipe = validate_recipe({"model": str(pruned), "method": "remove", "remove": {"layers": "1"},
                              "heal": {"data": train, "training_args": {"gradient_checkpointing": True,
                                                                         "max_grad_norm": 0.5}},
                              "output": str(out)})
    assert recipe.data["heal"]["training_args"] == ["gradient_checkpointing=True", "max_grad_norm=0.5"]
