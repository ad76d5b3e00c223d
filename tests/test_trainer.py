"""StreamlineTrainer: objectives, gradient accumulation, evaluation, trained-only checkpoints, resume, CLI."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from hf_streamline import StreamlineError
from hf_streamline.replacement import BlockReplacementTask, TokenWindows, build_replacement
from hf_streamline.training import (CHECKPOINT_MANIFEST_NAME, TRAINED_WEIGHTS_NAME, StreamlineTrainer,
                                    StreamlineTrainingArguments, get_objective)
from tiny_models import tiny_model


def _data(n=16, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TokenWindows(torch.randint(3, 128, (n, T), generator=g))


def _task(seed=0, start=1):
    model = tiny_model("llama", num_layers=4, seed=seed)
    return BlockReplacementTask(model, build_replacement(model, start, 2, "decoder_layer"), start, 2, True)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                use_cpu=True, disable_tqdm=True, logging_steps=1000, seed=0, lr_scheduler_type="constant", optim="sgd")
    base.update(kw)
    return StreamlineTrainingArguments(**base)


def test_unknown_objective():
    with pytest.raises(StreamlineError, match="unknown training objective 'ce'"):
        get_objective("ce")


def test_only_replacement_is_trainable_and_defaults(tmp_path):
    task = _task()
    trainer = StreamlineTrainer(task, _args(tmp_path), train_dataset=_data())
    assert trainer.args.remove_unused_columns is False and trainer.args.label_names == ["attention_mask"]
    assert trainer.loss_is_scaled_for_ga is False
    assert trainer.trainable_names and all(n.startswith("replacement.") for n in trainer.trainable_names)
    assert not any(p.requires_grad for p in task.source.parameters())


def test_no_parameter_matches_the_selection(tmp_path):
    with pytest.raises(StreamlineError, match="no trainable parameters"):
        StreamlineTrainer(_task(), _args(tmp_path), trainable=[r"^nothing_like_this"], train_dataset=_data())


def test_gradient_accumulation_equals_large_batch(tmp_path):
    data = _data(n=8)
    a, b = _task(), _task()
    StreamlineTrainer(a, _args(tmp_path / "a", max_steps=1, per_device_train_batch_size=8),
                      train_dataset=data).train()
    StreamlineTrainer(b, _args(tmp_path / "b", max_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2),
                      train_dataset=data).train()
    for p, q in zip(a.replacement.parameters(), b.replacement.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(a.replacement.parameters(), _task().replacement.parameters()))
    assert moved > 0


def test_evaluation_reports_the_objective_loss(tmp_path):
    trainer = StreamlineTrainer(_task(), _args(tmp_path), train_dataset=_data(), eval_dataset=_data(n=4, seed=1))
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0


def test_checkpoints_hold_only_trained_parameters_and_resume(tmp_path):
    data = _data()
    args = _args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    task = _task()
    StreamlineTrainer(task, args, train_dataset=data).train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    files = set(os.listdir(ckpt))
    assert {TRAINED_WEIGHTS_NAME, CHECKPOINT_MANIFEST_NAME, "trainer_state.json"} <= files
    assert not any(f.startswith("model") for f in files)
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / TRAINED_WEIGHTS_NAME))
    assert set(saved) == {n for n, p in task.named_parameters() if n.startswith("replacement.")}
    # resume from step 2 reaches the same weights as the uninterrupted run
    resumed = _task()
    trainer = StreamlineTrainer(resumed, _args(tmp_path / "r", max_steps=4), train_dataset=data)
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert trainer.state.global_step == 4
    for p, q in zip(resumed.replacement.parameters(), task.replacement.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_resume_from_checkpoint_of_another_model_is_refused(tmp_path):
    data = _data()
    StreamlineTrainer(_task(seed=0), _args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
                      train_dataset=data).train()
    ckpt = str(tmp_path / "out" / "checkpoint-2")
    other = StreamlineTrainer(_task(seed=1), _args(tmp_path / "x", max_steps=4), train_dataset=data)  # other weights
    with pytest.raises(StreamlineError, match="written for another model"):
        other.train(resume_from_checkpoint=ckpt)
    shifted = StreamlineTrainer(_task(seed=0, start=0), _args(tmp_path / "y", max_steps=4), train_dataset=data)
    with pytest.raises(StreamlineError, match="another model"):  # same base, another block
        shifted.train(resume_from_checkpoint=ckpt)
    with pytest.raises(StreamlineError, match="not a StreamlineTrainer checkpoint"):
        shifted.train(resume_from_checkpoint=str(tmp_path))


def test_lm_objective_with_kl_needs_teacher(tmp_path):
    model = tiny_model("llama", num_layers=3)
    with pytest.raises(StreamlineError, match="teacher"):
        StreamlineTrainer(model, _args(tmp_path, objective="lm", kl_weight=1.0), trainable=[r"lm_head"],
                          train_dataset=_data())


def test_lm_objective_partial_finetuning_is_reusable(tmp_path):
    """The recovery issue's shape: lm_head + last layer trained with next-token loss and KL to a teacher."""
    model = tiny_model("llama", num_layers=3, seed=2)
    teacher = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    trainer = StreamlineTrainer(model, _args(tmp_path, objective="lm", kl_weight=0.5, max_steps=2),
                                trainable=[r"^lm_head\.", r"^model\.layers\.2\."], teacher=teacher,
                                train_dataset=_data())
    trainer.train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("lm_head.", "model.layers.2.")) for k in changed)


def test_cli_replace_on_stories(stories_dir, tmp_path, capsys):
    from hf_streamline.data import bundled_path
    from transformers import AutoModelForCausalLM

    from hf_streamline.cli import main

    text = str(bundled_path("text/stories260k_samples.txt"))
    out = tmp_path / "replaced"
    code = main(["replace", "--model", str(stories_dir), "--calibration", text, "--samples", "4", "--seq-len", "64",
                 "--train-data", text, "--train-seq-len", "64", "--block-size", "2", "--replacement", "mlp",
                 "--max-steps", "6", "--batch-size", "4", "--device", "cpu", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "chosen block: layers" in printed and "block removed" in printed and "mlp" in printed
    assert (out / "modeling_streamline.py").exists() and (out / "streamline_plan.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "StreamlineForCausalLM" and model.config.text_config.num_hidden_layers == 4
    with pytest.raises(SystemExit) as exc:  # argparse refuses an unknown kind and lists the known ones
        main(["replace", "--model", str(stories_dir), "--block-size", "2", "--replacement", "attention",
              "--output", str(tmp_path / "bad")])
    assert exc.value.code == 2 and "decoder_layer" in capsys.readouterr().err
    assert main(["replace", "--model", str(stories_dir), "--block-size", "9", "--block-start", "0",
                 "--replacement", "none", "--output", str(tmp_path / "bad")]) == 2
    assert "larger than the model" in capsys.readouterr().err
