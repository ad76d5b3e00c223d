"""Distillation from the dense teacher's top-K logits cached on disk (``kd_top_k`` / ``heal --kd-top-k K``): the
sparse KL equals online KD when K is the vocabulary, a heal run trains the same weights, the teacher is loaded once
and freed before training, RAM does not grow with the data (at most two shards open), the shards are removed after
the run, resuming works, and the command line records ``kd_top_k``."""

from __future__ import annotations

import copy
import functools
import gc
import json
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from hf_streamline import StreamlineError
from hf_streamline.cli import main
from hf_streamline.healing import HealingConfig, heal
from hf_streamline.training.teacher_cache import KD_CACHE_FOLDER
from hf_streamline.healing.data import InstructionExamples, pad_collator
from hf_streamline.training import teacher_cache as tc
from hf_streamline.training.objectives.lm import LMObjective, kl_to_teacher, kl_to_teacher_topk
from hf_streamline.training.teacher_cache import IndexedExamples, cache_teacher_topk, indexed_collator
from test_heal_resume import SAVE, StopAt, _eval_losses, _losses, stories, text_file  # noqa: F401 - fixtures
from test_healing import ToyTokenizer, _data, _one_thread  # noqa: F401 - the one-thread fixture
from tiny_models import tiny_model

VOCAB = 128  # the tiny models'


def _distill(k=None, **kw):
    return HealingConfig(method="distill", last_k=1, kl_temperature=2.0, lm_weight=0.5, kd_top_k=k, **kw)


def _weights_equal(a, b, atol=1e-5):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for n in sa:
        assert torch.allclose(sa[n].float(), sb[n].float(), atol=atol), n


# ---- (a) the loss ---------------------------------------------------------------------------------------------------

def test_sparse_kl_over_the_whole_vocabulary_is_the_online_kl():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 7, VOCAB, generator=g) * 3, torch.randn(3, 7, VOCAB, generator=g) * 3
    mask = torch.ones(3, 7)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    for t in (1.0, 2.5):
        top = teacher.topk(VOCAB, dim=-1)
        online = kl_to_teacher(student, teacher, mask, t)
        sparse = kl_to_teacher_topk(student, top.values, top.indices, mask, t)
        assert abs(float(online) - float(sparse)) <= 1e-5, (t, online, sparse)
        # K < vocab: the teacher renormalised over its top K, the student's full log-softmax gathered at those ids
        top = teacher.topk(8, dim=-1)
        p = torch.softmax(top.values / t, -1)
        log_q = torch.log_softmax(student / t, -1).gather(-1, top.indices)
        want = ((p * (p.log() - log_q)).sum(-1) * mask).sum() / mask.sum() * t * t
        got = kl_to_teacher_topk(student, top.values, top.indices, mask, t)
        assert torch.allclose(got, want, atol=1e-5) and float(got) >= 0


def _examples(n=7, seed=0):
    """Instruction-like examples of different lengths (labels -100 on a prompt), so batches carry padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + (i * 5) % 11
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return InstructionExamples(out)


def test_cached_objective_equals_the_online_objective_on_the_same_batch(tmp_path):
    student, teacher = tiny_model("llama", 3, seed=2), tiny_model("llama", 4, seed=1)
    data, collate = _examples(), pad_collator(0)
    # batches of 3 consecutive examples in the cache pass; the training batch below mixes others (other padding)
    cache = cache_teacher_topk(teacher, [data], collate, tmp_path / "c", VOCAB, batch_size=3, progress=False)
    assert len(cache) == len(data) and cache.num_shards == 1
    order = [5, 0, 3, 6]
    batch = indexed_collator(collate)([IndexedExamples(data)[i] for i in order])
    assert batch["example_index"].tolist() == order and (batch["attention_mask"] == 0).any()
    objective = LMObjective(kl_weight=1.0, lm_weight=0.5, kl_temperature=2.0)
    with torch.no_grad():
        online, out_online = objective.compute_loss(SimpleNamespace(teacher=teacher), student, dict(batch))
        cached, out_cached = objective.compute_loss(SimpleNamespace(teacher=cache), student, dict(batch))
    assert abs(float(online) - float(cached)) <= 1e-5 and abs(float(out_online["kl"]) - float(out_cached["kl"])) <= 1e-5
    # what is cached: the teacher's K largest logits (float32) and their ids, for the real tokens only
    small = cache_teacher_topk(teacher, [data], collate, tmp_path / "s", 8, batch_size=3, progress=False)
    values, indices = small.example(4)
    with torch.no_grad():
        want = teacher(input_ids=torch.tensor([data.examples[4]["input_ids"]])).logits[0].topk(8, dim=-1)
    assert values.dtype == torch.float32 and indices.dtype == torch.int32
    assert values.shape == (len(data.examples[4]["input_ids"]), 8)
    assert torch.allclose(values, want.values, atol=1e-5) and torch.equal(indices.long(), want.indices)
    with pytest.raises(StreamlineError, match="needs 'example_index' in every batch"):
        objective.compute_loss(SimpleNamespace(teacher=cache), student,
                               {k: v for k, v in batch.items() if k != "example_index"})
    cache.delete()
    small.delete()
    assert not (tmp_path / "c").exists()


# ---- (b) a heal run -------------------------------------------------------------------------------------------------

def test_heal_with_the_whole_vocabulary_cached_trains_the_weights_of_online_kd(tmp_path):
    data = _data(n_windows=20, eval_size=4)
    kw = dict(max_steps=4, learning_rate=1e-2, batch_size=4, eval_steps=2, progress=False)
    online = heal(tiny_model("llama", 3, seed=2), ToyTokenizer(), data, _distill(), teacher=tiny_model("llama", 4, seed=1),
                  **kw)
    cached = heal(tiny_model("llama", 3, seed=2), ToyTokenizer(), data, _distill(VOCAB),
                  teacher=lambda: tiny_model("llama", 4, seed=1), output_dir=tmp_path / "run", **kw)
    _weights_equal(online.model, cached.model)
    a, b = online.record, cached.record
    assert abs(a["eval_loss_before"] - b["eval_loss_before"]) <= 1e-5  # validation goes through the cache too
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4] and all(abs(la[s] - lb[s]) <= 1e-5 for s in la)
    ea, eb = _eval_losses(a), _eval_losses(b)
    assert ea and all(abs(ea[s] - eb[s]) <= 1e-5 for s in ea) and a["best_step"] == b["best_step"]
    assert a["kd_top_k"] is None and "kd_cache" not in a
    assert b["kd_top_k"] == VOCAB and b["objective"] == "lm+kl"
    info = b["kd_cache"]
    # 4 steps x 4 < one epoch: the cache covers the 16 windows training sees (and validation), not the whole set
    assert len(data.train) > 16 and b["data"]["train_examples"] == 16
    assert info["top_k"] == VOCAB and info["examples"] == 16 + len(data.eval) and info["teacher_freed"]
    assert not (tmp_path / "run" / KD_CACHE_FOLDER).exists()


def test_bad_kd_top_k_fails_before_any_work():
    student, teacher = tiny_model("llama", 2), tiny_model("llama", 3)
    with pytest.raises(StreamlineError, match="^config.kd_top_k=0: must be an integer >= 1"):
        heal(student, ToyTokenizer(), _data(), _distill(0), teacher=teacher, max_steps=1, progress=False)
    with pytest.raises(StreamlineError, match=r"^config.kd_top_k=129: larger than the vocabulary \(128 tokens\)"):
        heal(student, ToyTokenizer(), _data(), _distill(VOCAB + 1), teacher=teacher, max_steps=1, progress=False)
    # a method that does not distill ignores it (as it ignores the temperature), and never calls a teacher loader
    result = heal(student, ToyTokenizer(), _data(), HealingConfig(method="partial", last_k=0, kd_top_k=8),
                  teacher=lambda: pytest.fail("the loader of an unused teacher was called"), max_steps=1, progress=False)
    assert "kd_top_k" not in result.record and "kd_cache" not in result.record


# ---- (c) the teacher is loaded once and gone before training --------------------------------------------------------

class TeacherWatch(TrainerCallback):
    """Whether the teacher behind ``refs[-1]`` is still alive when training begins and at the first step."""

    def __init__(self, refs):
        self.refs, self.alive = refs, {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.alive["train_begin"] = self.refs[-1]() is not None

    def on_step_begin(self, args, state, control, **kwargs):
        self.alive.setdefault("first_step", self.refs[-1]() is not None)


def _counting_loader(refs):
    def load():
        teacher = tiny_model("llama", 4, seed=1)
        refs.append(weakref.ref(teacher))
        return teacher

    return load


def test_the_teacher_is_loaded_once_and_freed_before_the_first_training_step():
    data = _data(n_windows=12, eval_size=4)
    kw = dict(max_steps=2, learning_rate=1e-2, batch_size=4, progress=False)
    refs = []
    watch = TeacherWatch(refs)
    result = heal(tiny_model("llama", 3, seed=2), ToyTokenizer(), data, _distill(16), teacher=_counting_loader(refs),
                  callbacks=[watch], **kw)
    assert len(refs) == 1, "the teacher is loaded exactly once"
    assert watch.alive == {"train_begin": False, "first_step": False}
    assert result.record["kd_cache"]["teacher_freed"] is True and result.record["global_step"] == 2
    # online KD keeps it beside the student for the whole run (what the cache avoids)
    refs.clear()
    watch = TeacherWatch(refs)
    heal(tiny_model("llama", 3, seed=2), ToyTokenizer(), data, _distill(), teacher=_counting_loader(refs),
         callbacks=[watch], **kw)
    assert len(refs) == 1 and watch.alive == {"train_begin": True, "first_step": True}
    # a caller that keeps its own reference keeps the teacher alive, and the record says so
    teacher = tiny_model("llama", 4, seed=1)
    kept = heal(tiny_model("llama", 3, seed=2), ToyTokenizer(), data, _distill(16), teacher=teacher, **kw)
    assert kept.record["kd_cache"]["teacher_freed"] is False


# ---- (d) memory does not grow with the data -------------------------------------------------------------------------

def test_shards_grow_with_the_data_but_at_most_two_are_resident_and_all_are_removed(tmp_path, monkeypatch):
    seq_len, k = 16, 8
    monkeypatch.setattr(tc, "SHARD_BYTES", 2 * seq_len * k * 8)  # two windows per shard
    seen = {"max_resident": 0, "loads": 0}
    shard = tc.TopKTeacherCache._shard

    def instrumented(self, j):
        out = shard(self, j)
        seen["max_resident"] = max(seen["max_resident"], len(self._lru))
        seen["loads"] = self.loads
        return out

    monkeypatch.setattr(tc.TopKTeacherCache, "_shard", instrumented)

    class CountShards(TrainerCallback):
        def __init__(self, folder):
            self.folder, self.files = folder, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.files = len(list(self.folder.glob("shard-*.safetensors")))

    runs = {}
    for scale in (1, 4):
        seen.update(max_resident=0, loads=0)
        data = _data(n_windows=8 * scale, seq_len=seq_len, eval_size=0)
        out = tmp_path / f"x{scale}"
        count = CountShards(out / KD_CACHE_FOLDER)
        result = heal(tiny_model("llama", 3, seed=2), ToyTokenizer(), data, _distill(k), teacher=tiny_model("llama", 4, seed=1),
                      callbacks=[count], max_steps=-(-len(data.train) // 4), learning_rate=1e-2, batch_size=4,
                      progress=False, output_dir=out)
        info = result.record["kd_cache"]
        assert count.files == info["shards"] == -(-len(data.train) // 2)  # an epoch or more: every window cached
        runs[scale] = dict(seen, shards=info["shards"], bytes=info["bytes"])
        assert not (out / KD_CACHE_FOLDER).exists(), "the shards are removed after the run"
        assert not out.exists() or not any(out.rglob("*.safetensors"))
    assert runs[4]["shards"] >= 3 * runs[1]["shards"] and runs[4]["bytes"] > 3 * runs[1]["bytes"]
    assert runs[1]["max_resident"] <= 2 and runs[4]["max_resident"] <= 2
    assert runs[4]["loads"] > runs[4]["shards"] // 2 >= 2  # a shuffled pass opens many shards, two at a time


# ---- resuming ------------------------------------------------------------------------------------------------------

def test_resumed_heal_with_the_cache_equals_the_uninterrupted_run(stories, tmp_path):  # noqa: F811
    from hf_streamline.pruning import remove_layers

    dense, tok, data = stories

    def run(out, **kw):
        pruned = copy.deepcopy(dense)
        remove_layers(pruned, [1])
        return heal(pruned, tok, data, HealingConfig(method="distill", last_k=1, kd_top_k=16), teacher=dense,
                    max_steps=4, learning_rate=1e-3, batch_size=4, progress=False, output_dir=out, save_steps=SAVE,
                    **kw)

    whole = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", callbacks=[StopAt(SAVE)])
    # the interrupted run left its checkpoint, not its cache: the resumed run writes the cache anew
    assert [p.name for p in (tmp_path / "cut").iterdir()] == [f"checkpoint-{SAVE}"]
    resumed = run(tmp_path / "cut", resume_from_checkpoint="latest")
    a, b = _losses(whole.record), _losses(resumed.record)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and all(abs(a[s] - b[s]) <= 1e-5 for s in a)
    assert resumed.record["resumed_from"] == f"checkpoint-{SAVE}" and resumed.record["kd_top_k"] == 16
    _weights_equal(whole.model, resumed.model)
    assert not (tmp_path / "cut" / KD_CACHE_FOLDER).exists()


# ---- (e) the command line -------------------------------------------------------------------------------------------

def test_cli_heal_distill_with_kd_top_k_on_stories260k(stories_dir, text_file, tmp_path, monkeypatch):  # noqa: F811
    import hf_streamline.healing as healing
    import hf_streamline.loading as loading

    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(stories_dir), "--layers", "1", "--output", str(pruned)]) == 0
    refs = []
    original_load = loading.load_model_and_tokenizer

    def load(spec, *a, **k):
        got = original_load(spec, *a, **k)
        if str(spec) == str(stories_dir):
            refs.append(weakref.ref(got[0]))
        return got

    monkeypatch.setattr(loading, "load_model_and_tokenizer", load)
    watch = TeacherWatch(refs)
    monkeypatch.setattr(healing, "heal", functools.partial(healing.heal, callbacks=[watch]))
    out = tmp_path / "healed"
    assert main(["heal", "--model", str(pruned), "--teacher", str(stories_dir), "--data", str(text_file),
                 "--method", "distill", "--kd-top-k", "8", "--last-k", "1", "--max-steps", "3", "--seq-len", "64",
                 "--learning-rate", "1e-3", "--output", str(out)]) == 0
    assert len(refs) == 1, "the teacher is loaded once"
    assert watch.alive == {"train_begin": False, "first_step": False}
    gc.collect()
    record = json.loads((out / "streamline_plan.json").read_text())["healing"][-1]
    assert record["kd_top_k"] == 8 and record["method"] == "distill:partial:1" and record["global_step"] == 3
    assert record["kd_cache"]["top_k"] == 8 and record["kd_cache"]["teacher_freed"] is True
    assert not Path(f"{out}.training").exists(), "the training folder (and the cache in it) is removed"
    assert (out / "model.safetensors").is_file()


# ---- (f) the frozen prefix read from the teacher's pass ------------------------------------------------------------

def _pruned(dense, removed):
    from hf_streamline.pruning import remove_layers

    student = copy.deepcopy(dense)
    remove_layers(student, removed)
    return student


def _count_calls(layer, counter):
    return layer.register_forward_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_a_prefix_read_from_the_teachers_pass_trains_the_weights_of_running_it(arch, tmp_path):
    """Layer 2 of a 4-layer model removed, the last layer trained: the student's layers 0 and 1 are the teacher's,
    so training reads their output from the cache instead of running them -- same losses, same weights.  (A tied
    lm_head is untied here: trained as the shared matrix it would change the input embedding, and there is no
    frozen prefix.)"""
    dense = tiny_model(arch, 4, seed=1)
    for key, value in vars(dense.config).items():  # gpt2's tiny config drops out (see the test below)
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
            setattr(dense.config, key, 0.0)
    for module in dense.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    data = _data(n_windows=20, eval_size=4)
    kw = dict(max_steps=4, learning_rate=1e-2, batch_size=4, eval_steps=2, progress=False)
    runs, calls = {}, {}
    for prefix in (False, True):
        student = _pruned(dense, [2])
        counter = [0]
        handle = _count_calls(student.model.layers[0] if hasattr(student, "model") else student.transformer.h[0],
                              counter)
        runs[prefix] = heal(student, ToyTokenizer(), data, _distill(16, prefix_cache=prefix, tied_policy="untie"),
                            teacher=dense,
                            output_dir=tmp_path / str(prefix), **kw)
        handle.remove()
        calls[prefix] = counter[0]
    a, b = runs[False].record, runs[True].record
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4] and all(abs(la[s] - lb[s]) <= 1e-5 for s in la)
    ea, eb = _eval_losses(a), _eval_losses(b)
    assert ea and all(abs(ea[s] - eb[s]) <= 1e-5 for s in ea)
    _weights_equal(runs[False].model, runs[True].model)
    assert "prefix" not in a["kd_cache"]
    info = b["kd_cache"]["prefix"]
    assert info["used"] and info["layers_skipped"] == 2 and info["max_abs_diff"] <= 1e-5
    # the frozen layer 0 ran in every training and validation step without the cache, and only once with it
    # (the check of the first example)
    assert calls[False] >= 4 and calls[True] == 1


def test_a_prefix_that_is_not_the_teachers_own_is_run_and_the_record_says_why(tmp_path):
    dense = tiny_model("llama", 4, seed=1)
    data = _data(n_windows=20)
    kw = dict(max_steps=3, learning_rate=1e-2, batch_size=4, progress=False)
    # layer 1 removed: the student's layers 0-1 are the teacher's 0 and 2, its input to layer 2 is not the teacher's
    off = heal(_pruned(dense, [1]), ToyTokenizer(), data, _distill(16, prefix_cache=False), teacher=dense, **kw)
    on = heal(_pruned(dense, [1]), ToyTokenizer(), data, _distill(16), teacher=dense, **kw)
    info = on.record["kd_cache"]["prefix"]
    assert not info["used"] and info["layers_skipped"] == 2 and "differs from the teacher's" in info["reason"]
    la, lb = _losses(off.record), _losses(on.record)
    assert sorted(la) == sorted(lb) and all(abs(la[s] - lb[s]) <= 1e-5 for s in la)
    _weights_equal(off.model, on.model)
    # a model that trains with dropout: its frozen layers do not compute what the teacher's pass computed
    gpt2 = tiny_model("gpt2", 4, seed=1)
    assert gpt2.config.resid_pdrop > 0
    drop = heal(_pruned(gpt2, [2]), ToyTokenizer(), data, _distill(16, tied_policy="untie"), teacher=gpt2, **kw)
    info = drop.record["kd_cache"]["prefix"]
    assert not info["used"] and "dropout" in info["reason"]


def test_frozen_prefix_counts_only_layers_below_every_trained_parameter():
    from hf_streamline.healing.api import frozen_prefix
    from test_healing import _tied_llama

    model = tiny_model("llama", 4)
    names = lambda *prefixes: [n for n, _ in model.named_parameters() if n.startswith(prefixes)]  # noqa: E731
    assert frozen_prefix(model, names("model.layers.3.", "lm_head", "model.norm")) == 3
    assert frozen_prefix(model, lambda n, _p: n.startswith("model.layers.2.")) == 2
    assert frozen_prefix(model, names("model.layers.3.", "model.layers.1.")) == 1
    assert frozen_prefix(model, names("model.layers.3.", "model.embed_tokens")) == 0  # the input embedding trains
    tied = _tied_llama()
    shared = [n for n, _ in tied.named_parameters() if n.startswith(("model.layers.3.", "model.embed_tokens"))]
    assert frozen_prefix(tied, shared) == 0  # lm_head trained as the shared matrix changes the input too
