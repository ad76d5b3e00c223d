"""LLM-Streamline replacement: kinds, block selection, activations (stream / disk cache), training, plans, bad input."""

from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch

from hf_streamline import StreamlineError, apply_plan, evaluate_perplexity, build_calibration
from hf_streamline.architecture import get_decoder_layers
from hf_streamline.calibration import load_documents
from hf_streamline.modeling import StreamlineForCausalLM, StreamlineMLP
from hf_streamline.plan import StreamlinePlan
from hf_streamline.replacement import (BlockReplacementTask, ReplacementOptions, TokenWindows, build_replacement,
                                       cache_block_activations, capture_block, install_replacement, replace_block,
                                       streamline, train_replacement)
from hf_streamline.training import StreamlineTrainingArguments
from hf_streamline.training.objectives.mse import masked_mse
from tiny_models import tiny_model

warnings.filterwarnings("ignore", message=".*TRANSFORMERS_VERBOSITY.*")


def _windows(n=24, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TokenWindows(torch.randint(3, 128, (n, T), generator=g), "random tokens")


def _args(tmp_path, steps=30, **kw):
    base = dict(output_dir=str(tmp_path / "train"), max_steps=steps, per_device_train_batch_size=4,
                learning_rate=3e-3, use_cpu=True, disable_tqdm=True, logging_steps=1000, seed=0)
    base.update(kw)
    return StreamlineTrainingArguments(**base)


@torch.no_grad()
def _heldout_mse(model, module, start, n, data, needs_context):
    task = BlockReplacementTask(model, module, start, n, needs_context)
    out = task(input_ids=data.input_ids, attention_mask=torch.ones_like(data.input_ids))
    return float(masked_mse(out["pred"], out["target"], out["token_mask"]))


# ---- bad input ------------------------------------------------------------------------------------------------------

def test_block_larger_than_model():
    with pytest.raises(StreamlineError, match="larger than the model"):
        replace_block(tiny_model("llama"), 0, 5, "mlp")
    with pytest.raises(StreamlineError, match="at least one original layer"):
        replace_block(tiny_model("llama"), 0, 4, "mlp")
    with pytest.raises(StreamlineError, match="runs past the last layer"):
        replace_block(tiny_model("llama"), 3, 2, "mlp")


def test_unknown_replacement_kind():
    with pytest.raises(StreamlineError, match="unknown replacement kind 'transformer'.*decoder_layer"):
        replace_block(tiny_model("llama"), 0, 2, "transformer")


def test_training_text_shorter_than_one_batch(stories_model, tmp_path):
    model, tok = stories_model
    args = _args(tmp_path, per_device_train_batch_size=8)
    with pytest.raises(StreamlineError, match="training text too short"):
        streamline(copy.deepcopy(model), tok, block_size=2, block_start=1, replacement="mlp",
                   train_data=["Once upon a time there was a cat."], training_args=args, train_seq_len=64)


def test_training_needs_train_data(stories_model, tmp_path):
    model, tok = stories_model
    with pytest.raises(StreamlineError, match="^train_data: the 'mlp' replacement is trained"):
        streamline(copy.deepcopy(model), tok, block_size=2, block_start=1, replacement="mlp", training_args=_args(tmp_path))


# ---- structure ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["none", "decoder_layer"])
def test_plain_kinds_stay_plain_checkpoints(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("qwen2", num_layers=5, seed=4)
    new, op = replace_block(model, 1, 3, kind)
    assert type(new).__name__ == "Qwen2ForCausalLM"
    assert new.config.num_hidden_layers == (2 if kind == "none" else 3)
    assert op == {"type": "replace", "kind": kind, "layers": [1, 2, 3], "options": op["options"]}
    new.save_pretrained(tmp_path / kind)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / kind).eval()
    ids = torch.randint(3, 128, (2, 9))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, new(input_ids=ids).logits)
    if kind == "decoder_layer":
        assert [layer.self_attn.layer_idx for layer in get_decoder_layers(again)] == [0, 1, 2]


def test_decoder_layer_initialised_from_first_layer_of_block():
    model = tiny_model("llama", num_layers=4, seed=5)
    first = copy.deepcopy(get_decoder_layers(model)[1])
    layer = build_replacement(model, 1, 2, "decoder_layer")
    for (a, p), (b, q) in zip(layer.named_parameters(), first.named_parameters()):
        assert a == b and torch.equal(p, q)


@pytest.mark.parametrize("arch", ["llama", "gemma", "gpt2", "phi3", "gpt_neox"])
def test_mlp_identity_init_equals_plain_removal(arch):
    model = tiny_model(arch, num_layers=4, seed=6)
    removed = install_replacement(copy.deepcopy(model), 1, 2, "none")
    replaced, _ = replace_block(model, 1, 2, "mlp", ReplacementOptions(init="identity"))
    mlp = get_decoder_layers(replaced.model)[1]
    assert isinstance(mlp, StreamlineMLP)
    assert mlp.gated == (arch not in ("gpt2", "gpt_neox"))
    ids = torch.randint(3, 128, (2, 8))
    with torch.no_grad():
        assert torch.allclose(replaced(input_ids=ids).logits, removed(input_ids=ids).logits, atol=1e-6)


def test_mlp_first_layer_init_copies_the_mlp_and_norm():
    model = tiny_model("gemma", num_layers=4, seed=7)  # Gemma: RMSNorm with (1 + w)
    layer = get_decoder_layers(model)[2]
    with torch.no_grad():
        layer.post_attention_layernorm.weight.normal_()
    mlp = build_replacement(model, 2, 2, "mlp")  # default init: the block's first MLP
    assert mlp.norm.kind == "rms_offset"
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = x + layer.mlp(layer.post_attention_layernorm(x))
        assert torch.allclose(mlp(x), expected, atol=1e-5)
    wider = build_replacement(model, 2, 2, "mlp", ReplacementOptions(width=80))
    assert wider.up_proj.weight.shape == (80, 32)


def test_plan_replays_structure():
    model = tiny_model("llama", num_layers=6, seed=8)
    new, op = replace_block(copy.deepcopy(model), 2, 3, "mlp")
    plan = StreamlinePlan(base_model="tiny", num_layers_before=6, method="replace", removed_layers=[2, 3, 4],
                          operations=[op])
    assert plan.num_layers_after == 4
    rebuilt = apply_plan(copy.deepcopy(model), plan)
    assert isinstance(rebuilt, StreamlineForCausalLM)
    assert rebuilt.config.replacements[0]["slot"] == 2 and rebuilt.config.replacements[0]["replaces"] == [2, 3, 4]
    assert [type(m).__name__ for m in get_decoder_layers(rebuilt.model)] == \
        [type(m).__name__ for m in get_decoder_layers(new.model)]
    ids = torch.randint(3, 128, (1, 7))
    with torch.no_grad():  # identity init is deterministic: the same model
        assert torch.equal(rebuilt(input_ids=ids).logits, new(input_ids=ids).logits)


def test_second_replacement_keeps_the_first_in_its_slot():
    model = tiny_model("llama", num_layers=8, seed=9)
    first, _ = replace_block(model, 5, 2, "mlp")  # slots: 0..4, mlp(5), 7
    second, _ = replace_block(first, 1, 3, "mlp")  # slots: 0, mlp(1), 4, mlp(3), 7
    assert second.config.replacement_slots == [1, 3]
    assert second.config.text_config.num_hidden_layers == 5
    ids = torch.randint(3, 128, (1, 6))
    with torch.no_grad():
        a = second.generate(input_ids=ids, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
        b = second.generate(input_ids=ids, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(a, b)


# ---- activations ----------------------------------------------------------------------------------------------------

def test_capture_block_matches_hidden_states():
    model = tiny_model("llama", num_layers=4, seed=10)
    ids = torch.randint(3, 128, (2, 8))
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    got = capture_block(model, 1, 2, ids, torch.ones_like(ids))
    assert torch.allclose(got["x"], hs[1]) and torch.allclose(got["y"], hs[3])
    assert "position_embeddings" in got["kwargs"]


def test_disk_cache_holds_one_shard_and_matches_stream(tmp_path):
    model = tiny_model("llama", num_layers=4, seed=11)
    data = _windows(n=10)
    cached = cache_block_activations(model, 1, 2, data, tmp_path / "acts", batch_size=4, shard_size=4, progress=False)
    assert cached.shard_sizes == [4, 4, 2] and len(list((tmp_path / "acts").glob("shard-*.pt"))) == 3
    got = capture_block(model, 1, 2, data.input_ids, torch.ones_like(data.input_ids))
    order = list(cached.sampler(seed=0))
    assert sorted(order) == list(range(10))
    assert [i // 4 for i in order[:4]] == [order[0] // 4] * 4  # a shard is read whole before the next
    for i in order:
        item = cached[i]
        assert torch.allclose(item["hidden_out"], got["y"][i])
        assert cached._loaded is not None and isinstance(cached._loaded[0], int)  # one shard in memory


@pytest.mark.parametrize("activations", ["stream", "cache"])
def test_training_lowers_heldout_mse(stories_model, activations, tmp_path):
    from hf_streamline.data import bundled_path
    from hf_streamline.replacement import token_windows

    model, tok = stories_model
    docs = load_documents(str(bundled_path("text/stories260k_samples.txt")))
    train, held = token_windows(tok, docs[:-1], 32), token_windows(tok, docs[-1:], 32)
    module = build_replacement(model, 2, 2, "mlp", ReplacementOptions(init="identity"))
    before = _heldout_mse(model, module, 2, 2, held, False)
    train_replacement(model, 2, 2, "mlp", module, train, _args(tmp_path, steps=30),
                      activations=activations, cache_dir=tmp_path / "cache", progress=False)
    after = _heldout_mse(model, module, 2, 2, held, False)
    assert after < 0.85 * before, (before, after)
    assert not (tmp_path / "cache" / "train").exists()  # shards deleted after training


def test_decoder_layer_trained_with_causal_mask(tmp_path):
    """The decoder-layer replacement sees the causal mask as at inference: its training-time prediction at position t
    does not depend on later positions.  Trained without the mask (a published bug) it does, and the weights differ."""
    model = tiny_model("llama", num_layers=4, seed=13)
    train = _windows(n=16, seed=3)
    layers = {}
    for mask in ("causal", "none"):
        module = build_replacement(model, 1, 2, "decoder_layer")
        train_replacement(model, 1, 2, "decoder_layer", module, train, _args(tmp_path, steps=15, mse_mask=mask),
                          progress=False)
        layers[mask] = module
    diffs = [float((p - q).abs().max()) for p, q in zip(layers["causal"].parameters(), layers["none"].parameters())]
    assert max(diffs) > 1e-4

    ids = _windows(n=2, seed=4).input_ids
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 120 + 3  # change only the future of position 9

    def prefix_moves(module, open_attention):
        task = BlockReplacementTask(model, module, 1, 2, True)
        with torch.no_grad():
            a = task(input_ids=ids, attention_mask=torch.ones_like(ids), open_attention=open_attention)["pred"]
            b = task(input_ids=changed, attention_mask=torch.ones_like(ids), open_attention=open_attention)["pred"]
        return float((a[:, :10] - b[:, :10]).abs().max())

    assert prefix_moves(layers["causal"], open_attention=False) < 1e-6  # what the trainer does: causal
    assert prefix_moves(layers["none"], open_attention=True) > 1e-4  # the bug would be caught by this check


def test_lm_objective_trains_only_the_replacement_with_kl(tmp_path):
    model = tiny_model("llama", num_layers=4, seed=14)
    dense = copy.deepcopy(model)
    module = build_replacement(model, 1, 2, "mlp", ReplacementOptions(init="identity"))
    pruned, rec = train_replacement(model, 1, 2, "mlp", module, _windows(n=16, seed=5),
                                    _args(tmp_path, steps=8, objective="lm", kl_weight=1.0), progress=False)
    assert isinstance(pruned, StreamlineForCausalLM)
    assert rec["global_step"] == 8
    mlp = get_decoder_layers(pruned.model)[1]
    assert float(mlp.down_proj.weight.abs().max()) > 0  # trained away from its zero init
    dense_layers = get_decoder_layers(dense)
    assert torch.equal(get_decoder_layers(pruned.model)[0].mlp.up_proj.weight, dense_layers[0].mlp.up_proj.weight)
    assert torch.equal(pruned.get_input_embeddings().weight, dense.get_input_embeddings().weight)


# ---- stories260K: trained replacement beats plain removal -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mlp", "decoder_layer"])
def test_stories_trained_replacement_beats_removal(stories_model, kind, tmp_path):
    model, tok = stories_model
    from hf_streamline.data import bundled_path

    docs = load_documents(str(bundled_path("text/stories260k_samples.txt")))
    train_docs, held_out = docs[:-1], docs[-1]
    calib = build_calibration(tok, train_docs, n_samples=8, seq_len=64)
    removed, plan_none = streamline(copy.deepcopy(model), tok, block_size=2, replacement="none", calibration=calib,
                                    progress=False)
    replaced, plan = streamline(copy.deepcopy(model), tok, block_size=2, replacement=kind, calibration=calib,
                                train_data=train_docs, train_seq_len=64, activations="cache" if kind == "decoder_layer" else "stream",
                                training_args=_args(tmp_path, steps=40, learning_rate=1e-3), progress=False)
    assert plan.removed_layers == plan_none.removed_layers  # the same block, chosen by block_cosine
    assert plan.metric == "block_cosine" and plan.healing and plan.operations[0]["trained"]
    ppl_removed = evaluate_perplexity(removed, tok, held_out, seq_len=64, progress=False)
    ppl_replaced = evaluate_perplexity(replaced, tok, held_out, seq_len=64, progress=False)
    assert ppl_replaced < ppl_removed, (ppl_replaced, ppl_removed)


def test_streamline_measures_dense_removed_and_replaced_without_a_copy_of_the_model(stories_model, tmp_path):
    """The library, not the command, takes the three measurements; "removed" (the block skipped in place) equals the
    perplexity of the plainly removed block, and the dense model is not held twice."""
    model, tok = stories_model
    from hf_streamline.data import bundled_path

    docs = load_documents(str(bundled_path("text/stories260k_samples.txt")))
    calib = build_calibration(tok, docs[:-1], n_samples=8, seq_len=64)
    measure = lambda m: evaluate_perplexity(m, tok, docs[-1], seq_len=64, progress=False)  # noqa: E731
    dense = measure(model)
    removed, _ = streamline(copy.deepcopy(model), tok, block_size=2, replacement="none", calibration=calib,
                            progress=False)
    copies = []
    real_deepcopy = copy.deepcopy
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(copy, "deepcopy", lambda x, *a, **k: copies.append(type(x)) or real_deepcopy(x, *a, **k))
        _, plan = streamline(copy.deepcopy(model), tok, block_size=2, replacement="mlp", calibration=calib,
                             train_data=docs[:-1], train_seq_len=64, training_args=_args(tmp_path, steps=4),
                             progress=False, measure=measure, measured_on="held-out story")
    assert copies.count(type(model)) == 1  # the test's own copy only
    p = plan.evaluation["perplexity"]
    assert p["text"] == "held-out story"
    assert p["dense"] == pytest.approx(dense, rel=1e-5)
    assert p["removed"] == pytest.approx(measure(removed), rel=1e-5)
    assert p["replaced"] != p["removed"]


# ---- lm + KD against the dense model's cached top-k logits (no second copy of the model) ------------------------------

def _lm_kd(tmp_path, name, windows, steps=4, **kw):
    model = tiny_model("llama", num_layers=4, seed=14)
    module = build_replacement(model, 1, 2, "decoder_layer", ReplacementOptions())
    args = _args(tmp_path / name, steps=steps, objective="lm", kl_weight=1.0, lm_weight=0.5, kl_temperature=2.0,
                 logging_steps=1, **kw)
    return train_replacement(model, 1, 2, "decoder_layer", module, windows, args, progress=False,
                             cache_dir=tmp_path / name / "cache")


def test_lm_kd_with_cached_full_vocab_logits_equals_online_kd(tmp_path, monkeypatch):
    windows = _windows(n=16, seed=5)  # 4 steps x 4 = one epoch: the cached run reads the same windows
    online, rec_online = _lm_kd(tmp_path, "online", windows)
    import hf_streamline.replacement.api as api

    def no_copy(*_a, **_k):
        raise AssertionError("the dense model was copied although its logits are cached")

    monkeypatch.setattr(api, "copy", types.SimpleNamespace(deepcopy=no_copy))  # only the replacement module's copy
    cached, rec_cached = _lm_kd(tmp_path, "cached", windows, kd_top_k=online.config.vocab_size)
    losses = lambda rec: [e["loss"] for e in rec["log_history"] if "loss" in e]  # noqa: E731
    assert len(losses(rec_cached)) == 4
    assert losses(rec_cached) == pytest.approx(losses(rec_online), rel=1e-5, abs=1e-6)
    a, b = get_decoder_layers(online)[1], get_decoder_layers(cached)[1]
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    kd = rec_cached["kd_cache"]
    assert kd["top_k"] == online.config.vocab_size and kd["examples"] == 16
    assert kd["prefix"] == {"layers_skipped": 1, "used": True}  # layer 0 is read from the cache, not run
    assert not any((tmp_path / "cached" / "cache").iterdir())  # the shards never outlive the run
    assert "kd_cache" not in rec_online


def test_lm_kd_cache_holds_only_the_windows_training_reads(tmp_path):
    _, rec = _lm_kd(tmp_path, "short", _windows(n=40, seed=5), steps=3, kd_top_k=8)
    assert rec["train_windows"] == 12 and rec["kd_cache"]["examples"] == 12
    assert rec["global_step"] == 3


def test_kd_top_k_without_kl_weight_is_refused(tmp_path):
    model = tiny_model("llama", num_layers=4, seed=14)
    module = build_replacement(model, 1, 2, "decoder_layer", ReplacementOptions())
    with pytest.raises(StreamlineError, match="kd_top_k"):
        train_replacement(model, 1, 2, "decoder_layer", module, _windows(n=8),
                          _args(tmp_path, steps=2, objective="lm", kd_top_k=8), progress=False)


def test_replace_cli_lm_kd_with_cached_logits_on_stories(stories_dir, data_dir, tmp_path, capsys):
    import json

    from hf_streamline.cli import main

    text = str(data_dir / "text" / "stories260k_samples.txt")
    common = ["replace", "--model", str(stories_dir), "--replacement", "decoder_layer", "--block-size", "2",
              "--objective", "lm", "--train-data", text, "--max-steps", "3", "--train-seq-len", "64",
              "--calibration", text, "--samples", "8", "--seq-len", "64"]
    assert main(common + ["--kd-top-k", "8", "--output", str(tmp_path / "bad")]) != 0
    err = capsys.readouterr().err
    assert "--kd-top-k 8:" in err and "--kl-weight" in err
    assert not (tmp_path / "bad").exists()
    assert main(common + ["--kl-weight", "1", "--kd-top-k", "8", "--output", str(tmp_path / "out")]) == 0
    heal = json.loads((tmp_path / "out" / "streamline_plan.json").read_text())["healing"][0]
    assert heal["objective"] == "lm" and heal["global_step"] == 3 and heal["kl_weight"] == 1.0
    assert heal["kd_cache"]["top_k"] == 8 and heal["kd_cache"]["examples"] == heal["train_windows"]
    start = heal["kd_cache"]["prefix"]["layers_skipped"]
    assert heal["kd_cache"]["prefix"]["used"] == (start > 0)
