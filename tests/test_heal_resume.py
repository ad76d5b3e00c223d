"""Resumable healing and the training folder: ``heal --save-steps / --resume-from-checkpoint PATH|latest`` continue an
interrupted run exactly (same loss curve, same weights) for every method; ``heal`` and ``replace`` remove their
``OUTPUT.training/`` after a successful save unless ``--keep-checkpoints`` and keep it (saying how to continue) on
failure; the Python API never leaves a work folder in ``$TMPDIR``."""

from __future__ import annotations

import copy
import functools
import json
import shlex
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_streamline import StreamlineError
from hf_streamline.cli import main
from hf_streamline.healing import HealingDataConfig, bitsandbytes_problem, heal, load_healing_data
from hf_streamline.pruning import remove_layers

STEPS, SAVE = 4, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny steps on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text_file(data_dir) -> Path:
    return data_dir / "text" / "stories260k_samples.txt"


@pytest.fixture(scope="module")
def stories(stories_dir, text_file):
    from hf_streamline.loading import load_model_and_tokenizer

    dense, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    docs = [d.strip() for d in text_file.read_text().split("<|endoftext|>") if d.strip()]
    data = load_healing_data(tok, HealingDataConfig(source=docs, seq_len=64, eval_size=4))
    return dense, tok, data


class StopAt(TrainerCallback):
    """Stop the run right after the checkpoint of ``step`` is written (as a Ctrl-C or a crash would)."""

    def __init__(self, step: int, exc: type[BaseException] = KeyboardInterrupt):
        self.step, self.exc = step, exc

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise self.exc(f"stopped after step {state.global_step}")


def _losses(record):
    return {e["step"]: e["loss"] for e in record["loss_curve"] if e.get("loss") is not None}


def _eval_losses(record):
    return {e["step"]: e["eval_loss"] for e in record["loss_curve"] if e.get("eval_loss") is not None}


def _heal(stories, spec, out, **kw):
    dense, tok, data = stories
    pruned = copy.deepcopy(dense)
    remove_layers(pruned, [1])
    return heal(pruned, tok, data, spec, teacher=dense, max_steps=STEPS, learning_rate=1e-3, batch_size=4,
                lora_r=4, progress=False, output_dir=out, save_steps=SAVE, **kw)


@pytest.mark.parametrize("spec", ["partial:1", "lora", "qlora", "distill"])
def test_resumed_heal_equals_the_uninterrupted_run(stories, spec, tmp_path):
    if spec == "qlora" and bitsandbytes_problem() is not None:
        pytest.fail(f"qlora: {bitsandbytes_problem()} (bitsandbytes is in the test extra)")
    whole = _heal(stories, spec, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _heal(stories, spec, tmp_path / "cut", callbacks=[StopAt(SAVE)])
    assert [p.name for p in (tmp_path / "cut").iterdir()] == [f"checkpoint-{SAVE}"]
    ckpt = tmp_path / "cut" / f"checkpoint-{SAVE}"
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {p.name for p in ckpt.iterdir()}
    manifest = json.loads((ckpt / "streamline_checkpoint.json").read_text())
    trained = load_file(ckpt / "trained_parameters.safetensors")
    assert set(trained) == set(manifest["trained_parameters"])  # small: the trained parameters only
    assert sum(t.numel() for t in trained.values()) == whole.record["trainable_parameters"]
    resumed = _heal(stories, spec, tmp_path / "cut", resume_from_checkpoint="latest")

    a, b = _losses(whole.record), _losses(resumed.record)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert all(abs(a[s] - b[s]) <= 1e-5 for s in a), (a, b)
    ea, eb = _eval_losses(whole.record), _eval_losses(resumed.record)
    assert ea and sorted(ea) == sorted(eb) and all(abs(ea[s] - eb[s]) <= 1e-5 for s in ea)
    assert resumed.record["global_step"] == STEPS and resumed.record["resumed_from"] == f"checkpoint-{SAVE}"
    assert resumed.record["train_tokens"] == whole.record["train_tokens"] == STEPS * 4 * 64
    sa, sb = whole.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k
    if whole.adapter is not None:
        for k, v in whole.adapter.state_dict.items():
            assert torch.allclose(v, resumed.adapter.state_dict[k], atol=1e-5), k


def test_resume_refusals_name_the_checkpoint_and_what_to_do(stories, tmp_path):
    with pytest.raises(StreamlineError, match=r"resume_from_checkpoint latest: '.*empty' holds no checkpoint to resume "
                                              r"from; train with --save-steps N"):
        _heal(stories, "partial:1", tmp_path / "empty", resume_from_checkpoint="latest")
    with pytest.raises(StreamlineError, match="resume_from_checkpoint latest needs the training folder"):
        _heal(stories, "partial:1", None, resume_from_checkpoint=True)
    weights_only = tmp_path / "best" / "checkpoint-3"  # what a best-validation save (no optimizer) looks like
    weights_only.mkdir(parents=True)
    (weights_only / "trained_parameters.safetensors").write_bytes(b"")
    (weights_only / "streamline_checkpoint.json").write_text("{}")
    with pytest.raises(StreamlineError, match=r"holds only the trained weights \(no trainer_state.json, optimizer.pt, "
                                              r"scheduler.pt\).*--save-steps N"):
        _heal(stories, "partial:1", None, resume_from_checkpoint=str(weights_only))
    with pytest.raises(StreamlineError, match="holds no checkpoint to resume from; its checkpoints \\(checkpoint-3\\)"):
        _heal(stories, "partial:1", tmp_path / "best", resume_from_checkpoint="latest")
    from hf_streamline.training.checkpoints import check_fresh_start

    with pytest.raises(StreamlineError, match=r"holds the checkpoints of an earlier run \(checkpoint-3: best-validation "
                                              r"weights, which do not resume\); pass --overwrite to remove them"):
        check_fresh_start(tmp_path / "best", None, overwrite=False)  # a run that does not resume never mixes with them
    check_fresh_start(tmp_path / "best", None, overwrite=True)
    assert not (tmp_path / "best").exists()
    with pytest.raises(StreamlineError, match="is not a checkpoint of hf_streamline's trainer"):
        _heal(stories, "partial:1", None, resume_from_checkpoint=str(tmp_path))
    # a checkpoint of another method does not fit
    with pytest.raises(KeyboardInterrupt):
        _heal(stories, "partial:1", tmp_path / "p", callbacks=[StopAt(SAVE)])
    with pytest.raises(StreamlineError, match="was written for another model"):
        _heal(stories, "partial:2", tmp_path / "p", resume_from_checkpoint="latest")


def test_save_steps_with_best_checkpoint(stories, tmp_path):
    from hf_streamline.healing import HealingConfig, get_healing_method
    from hf_streamline.healing.api import training_arguments

    _, _, data = stories
    cfg = HealingConfig(max_steps=12, batch_size=4)
    m = get_healing_method(cfg)
    args = training_arguments(cfg, m, data, str(tmp_path), torch.device("cpu"), save_steps=4)
    assert (args.save_steps, args.eval_steps, args.save_only_model, args.load_best_model_at_end) == (4, 2, False, True)
    args = training_arguments(cfg, m, data, str(tmp_path), torch.device("cpu"))  # no --save-steps: as before
    assert (args.save_steps, args.eval_steps, args.save_only_model) == (3, 3, True)
    with pytest.raises(StreamlineError, match=r"^save_steps=5: must be a multiple of config.eval_steps \(2: .* or set "
                                              "config.best_checkpoint=False"):
        training_arguments(HealingConfig(max_steps=12, eval_steps=2), m, data, str(tmp_path), torch.device("cpu"), 5)
    with pytest.raises(StreamlineError, match="^save_steps=-1: must be >= 1"):
        training_arguments(cfg, m, data, str(tmp_path), torch.device("cpu"), -1)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_python_heal_leaves_no_work_folder_even_when_it_raises(stories, tmp_path, monkeypatch, exc):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert tempfile.gettempdir() == str(tmp)
    with pytest.raises(exc):
        _heal(stories, "partial:1", None, callbacks=[StopAt(SAVE, exc)])
    assert not list(tmp.glob("hf_streamline_heal_*"))
    _heal(stories, "partial:1", None)
    assert not list(tmp.iterdir())


# ---- the command line ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pruned_dir(stories_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "pruned"
    assert main(["prune", "--model", str(stories_dir), "--layers", "1", "--output", str(out)]) == 0
    return out


def _heal_argv(pruned_dir, text_file, out, *extra):
    return ["heal", "--model", str(pruned_dir), "--data", str(text_file), "--method", "partial:1", "--max-steps",
            str(STEPS), "--seq-len", "64", "--learning-rate", "1e-3", "--save-steps", str(SAVE), "--output", str(out),
            *extra]


def _weights(folder):
    return load_file(Path(folder) / "model.safetensors")


def test_cli_heal_resume_and_the_training_folder(pruned_dir, text_file, tmp_path, monkeypatch, capsys):
    import hf_streamline.healing as healing

    tmp = tmp_path / "tmpdir"  # the command line works in OUTPUT.training, never in $TMPDIR
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    kept = tmp_path / "kept"
    assert main(_heal_argv(pruned_dir, text_file, kept, "--keep-checkpoints")) == 0
    assert [p.name for p in (tmp_path / "kept.training").iterdir()] == [f"checkpoint-{STEPS}"]
    plain = tmp_path / "plain"
    assert main(_heal_argv(pruned_dir, text_file, plain)) == 0  # default: removed after the save
    assert not (tmp_path / "plain.training").exists()
    assert (plain / "model.safetensors").is_file()

    # interrupted after the checkpoint of step 2: one line, the checkpoint kept, the command that continues
    out = tmp_path / "cut"
    original = healing.heal
    monkeypatch.setattr(healing, "heal", functools.partial(original, callbacks=[StopAt(SAVE)]))
    capsys.readouterr()
    assert main(_heal_argv(pruned_dir, text_file, out)) == 130
    err = capsys.readouterr().err
    lines = [ln[ln.index("interrupted;"):] for ln in err.replace("\r", "\n").splitlines() if "interrupted;" in ln]
    assert len(lines) == 1, err
    train_dir = tmp_path / "cut.training"
    assert lines[0].startswith(f"interrupted; no output was written; the checkpoints are kept in {str(train_dir)!r} "
                               f"(newest: checkpoint-{SAVE}); continue with: hf-streamline heal ")
    assert not out.exists() and (train_dir / f"checkpoint-{SAVE}" / "optimizer.pt").is_file()
    command = shlex.split(lines[0].split("continue with: ", 1)[1])
    assert command[-2:] == ["--resume-from-checkpoint", "latest"]
    monkeypatch.setattr(healing, "heal", original)

    # a fresh run on it refuses to mix with the earlier run's checkpoints
    assert main(_heal_argv(pruned_dir, text_file, out)) == 2
    assert (f"the training folder {str(train_dir)!r} holds the checkpoints of an earlier run (newest: "
            f"checkpoint-{SAVE}); continue it with --resume-from-checkpoint latest, or pass --overwrite to start over "
            "(this removes them)") in capsys.readouterr().err
    assert main(_heal_argv(pruned_dir, text_file, out, "--remove", "1")) == 2
    assert "do not apply to iterative healing (--remove)" in capsys.readouterr().err

    # the printed command continues it; the result equals the uninterrupted run and the folder is gone
    assert main(command[1:]) == 0
    assert not train_dir.exists()
    a, b = _weights(kept), _weights(out)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    ra = json.loads((kept / "streamline_plan.json").read_text())["healing"][-1]
    rb = json.loads((out / "streamline_plan.json").read_text())["healing"][-1]
    la, lb = _losses(ra), _losses(rb)
    assert sorted(la) == sorted(lb) == list(range(1, STEPS + 1)) and all(abs(la[s] - lb[s]) <= 1e-5 for s in la)
    assert rb["resumed_from"] == f"checkpoint-{SAVE}" and rb["train_tokens"] == ra["train_tokens"]
    assert not list(tmp.iterdir())


def test_cli_heal_failure_after_training_keeps_the_checkpoint_and_says_so(pruned_dir, text_file, tmp_path,
                                                                         monkeypatch, capsys):
    import hf_streamline.healing as healing

    def full_disk(*a, **k):
        raise StreamlineError("cannot write the output: disk full")

    monkeypatch.setattr(healing, "save_healed", full_disk)
    out = tmp_path / "healed"
    assert main(_heal_argv(pruned_dir, text_file, out)) == 2
    err = capsys.readouterr().err
    assert (f"hf-streamline heal: error: cannot write the output: disk full; the checkpoints are kept in "
            f"{str(tmp_path / 'healed.training')!r} (newest: checkpoint-{STEPS}); continue with: hf-streamline heal "
            ) in err
    assert (tmp_path / "healed.training" / f"checkpoint-{STEPS}").is_dir()
    # without --save-steps nothing resumes: the best-step weights it wrote are removed on failure too
    argv = _heal_argv(pruned_dir, text_file, tmp_path / "nosave")
    i = argv.index("--save-steps")
    assert main(argv[:i] + argv[i + 2:]) == 2
    assert "checkpoints are kept" not in capsys.readouterr().err
    assert not (tmp_path / "nosave.training").exists()


def test_cli_replace_removes_its_training_folder_unless_keep_checkpoints(stories_dir, text_file, tmp_path):
    def argv(out, *extra):
        return ["replace", "--model", str(stories_dir), "--calibration", str(text_file), "--samples", "4",
                "--seq-len", "64", "--train-data", str(text_file), "--train-seq-len", "64", "--block-size", "2",
                "--block-start", "1", "--replacement", "mlp", "--max-steps", "2", "--save-steps", "1",
                "--batch-size", "4", "--device", "cpu", "--output", str(out), *extra]

    assert main(argv(tmp_path / "a")) == 0
    assert (tmp_path / "a" / "model.safetensors").is_file() and not (tmp_path / "a.training").exists()
    assert main(argv(tmp_path / "b", "--keep-checkpoints")) == 0
    kept = tmp_path / "b.training"
    assert {p.name for p in kept.iterdir()} == {"checkpoint-1", "checkpoint-2"}
    # resume from a kept checkpoint given by path, inside the --train-output it continues in
    assert main(argv(tmp_path / "c", "--train-output", str(kept), "--resume-from-checkpoint",
                     str(kept / "checkpoint-2"))) == 0
    assert not kept.exists()
    a, c = _weights(tmp_path / "a"), _weights(tmp_path / "c")
    assert a.keys() == c.keys() and all(torch.allclose(a[k], c[k], atol=1e-5) for k in a)
