"""Training-free linear block replacement (ReplaceMe): fit, fold, removal, plan, CLI.

Tiny random models of every architecture in the tables (GPT-2's Conv1D, Mixtral and Qwen-MoE experts included); the
stories260K model for a real fold that must beat plain removal on held-out text.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from hf_streamline import StreamlineError, apply_plan, evaluate_perplexity, replace_linear
from hf_streamline.architecture import find_mlp, get_decoder_layers, mlp_output_projections, skip_layers
from hf_streamline.calibration import CalibrationConfig, CalibrationData, build_calibration, load_documents
from hf_streamline.plan import PLAN_FILENAME, StreamlinePlan
from hf_streamline.replacement import save_replaced
from hf_streamline.replacement.linear import (LINEAR_MAPS_FILE, LinearFitStats, collect_linear_fit, fit_token_mask,
                                              linear_map_hook, load_linear_maps)
from tiny_models import ARCHS, tiny_model

warnings.filterwarnings("ignore", message=".*TRANSFORMERS_VERBOSITY.*")

UNFOLDABLE = {"gemma2", "gemma3"}  # post_feedforward_layernorm between the MLP and the residual add
FOLDABLE = [a for a in ARCHS if a not in UNFOLDABLE]


def _calib(n=10, T=24, seed=0, vocab=128) -> CalibrationData:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, T), generator=g)
    return CalibrationData(ids, torch.ones_like(ids), CalibrationConfig(source="random tokens", n_samples=n, seq_len=T))


@pytest.fixture
def stories_text(data_dir):
    return data_dir / "text" / "stories260k_samples.txt"


# ---- every architecture: fold == hooked map, in a fresh process; cached == uncached generation ---------------------

PROBE_IDS = [[5, 17, 33, 2, 90, 41, 7, 64, 12, 3], [9, 8, 7, 6, 5, 4, 3, 99, 100, 101]]

FRESH_PROCESS = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
out = {}
for arch, folder in json.loads(sys.argv[1]).items():
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor(json.loads(sys.argv[2]))
    with torch.no_grad():
        logits = m(ids).logits
        kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
        cached = m.generate(ids[:1], use_cache=True, **kw)
        uncached = m.generate(ids[:1], use_cache=False, **kw)
    out[arch] = {"logits": logits.tolist(), "cached": cached.tolist(), "uncached": uncached.tolist(),
                 "layers": m.config.num_hidden_layers}
json.dump(out, open(sys.argv[3], "w"))
"""


@pytest.fixture(scope="module")
def folded_models(tmp_path_factory):
    """Every foldable architecture: the fold of a fitted map (block 2, folded into layer 1 -- for Qwen-MoE with
    decoder_sparse_step=2 a sparse layer: routed experts + shared expert), the same map applied by a hook on the
    unfolded model, the saved folder; one fresh process reloads them all."""
    root = tmp_path_factory.mktemp("linear_folded")
    calib = _calib()
    ids = torch.tensor(PROBE_IDS)
    results, folders = {}, {}
    for arch in FOLDABLE:
        model = tiny_model(arch, num_layers=4)
        ref = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, plan = replace_linear(model, calib, layers="2-2", heldout_samples=0, progress=False)
        T = load_linear_maps(plan.attachments[LINEAR_MAPS_FILE])["block0"]
        with torch.no_grad(), skip_layers(ref, [2]), linear_map_hook(find_mlp(get_decoder_layers(ref)[1])[0], T):
            want = ref(ids).logits
        folder = root / arch
        save_replaced(out, None, plan, folder)
        folders[arch] = str(folder)
        results[arch] = {"want": want, "plan": plan, "model": out, "T": T}
    dump = root / "fresh.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(folders), json.dumps(PROBE_IDS), str(dump)],
                   check=True, env=env, timeout=600)
    fresh = json.loads(dump.read_text())
    return results, fresh


@pytest.mark.parametrize("arch", FOLDABLE)
def test_folded_checkpoint_reloads_with_the_hooked_logits(folded_models, arch):
    results, fresh = folded_models
    got = torch.tensor(fresh[arch]["logits"])
    want = results[arch]["want"]
    assert fresh[arch]["layers"] == 3
    assert not torch.allclose(results[arch]["T"], torch.eye(results[arch]["T"].shape[0]), atol=1e-3)  # a real map
    assert (got - want).abs().max() < 1e-5, f"{arch}: folded checkpoint differs from the hooked model"


@pytest.mark.parametrize("arch", FOLDABLE)
def test_folded_checkpoint_cached_equals_uncached_generation(folded_models, arch):
    _, fresh = folded_models
    assert fresh[arch]["cached"] == fresh[arch]["uncached"]
    assert len(fresh[arch]["cached"][0]) == len(PROBE_IDS[0]) + 8


def test_the_tables_find_every_expert_and_the_shared_expert():
    mixtral = tiny_model("mixtral")
    paths = [p.path for p in mlp_output_projections(get_decoder_layers(mixtral)[1])]
    assert paths == ["mlp.experts.down_proj"]
    qmoe = tiny_model("qwen2_moe")
    projections = mlp_output_projections(get_decoder_layers(qmoe)[1])
    assert [p.path for p in projections] == ["mlp.experts.down_proj", "mlp.shared_expert.down_proj"]
    assert [p.layout for p in projections] == ["experts_out_in", "out_in"]
    gpt2 = mlp_output_projections(get_decoder_layers(tiny_model("gpt2"))[1])
    assert [(p.path, p.layout, p.bias) for p in gpt2] == [("mlp.c_proj", "in_out", "bias")]
    opt = mlp_output_projections(get_decoder_layers(tiny_model("opt"))[1])
    assert [(p.path, p.layout) for p in opt] == [("fc2", "out_in")]


@pytest.mark.parametrize("arch", sorted(UNFOLDABLE))
def test_post_mlp_norm_is_refused(arch):
    with pytest.raises(StreamlineError, match="post_feedforward_layernorm.*cannot be folded"):
        replace_linear(tiny_model(arch), _calib(), layers="2-2", progress=False)


# ---- the fit --------------------------------------------------------------------------------------------------------

def _stacked(model, calib, s, n, skip=0):
    """X, Y and h_{s+n} stacked over every fitted token, from output_hidden_states (an independent path; valid for
    blocks that end before the last layer, where hidden_states is not yet normalised)."""
    mlp = find_mlp(get_decoder_layers(model)[s - 1])[0]
    got = []
    handle = mlp.register_forward_hook(lambda mod, a, out: got.append(out.detach()))
    try:
        with torch.no_grad():
            out = model(input_ids=calib.input_ids, attention_mask=calib.attention_mask, output_hidden_states=True)
    finally:
        handle.remove()
    sel = fit_token_mask(calib.attention_mask, skip)
    X = got[0][sel].double()
    hs, hn = out.hidden_states[s][sel].double(), out.hidden_states[s + n][sel].double()
    return X, hn - (hs - X), hn


def test_lstsq_equals_torch_linalg_lstsq_on_stacked_activations():
    torch.manual_seed(0)
    model = tiny_model("llama", num_layers=6)
    calib = _calib(n=12, T=20)
    s, n = 2, 2
    stats = collect_linear_fit(model, calib.batches(5), n, [1, 2, 3], skip_first_tokens=1, progress=False)
    X, Y, hn = _stacked(model, calib, s, n, skip=1)
    assert stats.tokens == X.shape[0] == 12 * 19
    want = torch.linalg.lstsq(X, Y, driver="gelsd").solution
    got = stats.solve(s)
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-9)
    err = float(((X @ got - Y) ** 2).sum() / (hn ** 2).sum())
    assert stats.residual(s, got) == pytest.approx(err, rel=1e-6)
    assert stats.removal_residual(s) == pytest.approx(float(((X - Y) ** 2).sum() / (hn ** 2).sum()), rel=1e-6)
    # ridge: (XᵀX + λ mean(diag) I)⁻¹ XᵀY
    lam = 0.1 * float(torch.diagonal(X.T @ X).mean())
    ridge = torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y)
    assert torch.allclose(stats.solve(s, ridge=0.1), ridge, rtol=1e-7, atol=1e-9)


def test_padding_tokens_do_not_change_the_map():
    model = tiny_model("qwen2", num_layers=5)
    g = torch.Generator().manual_seed(1)
    lengths = [20, 7, 13, 16, 9, 20]
    seqs = [torch.randint(3, 128, (k,), generator=g) for k in lengths]
    T = max(lengths)
    ids = torch.randint(3, 128, (len(seqs), T), generator=g)  # garbage in the pad positions
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    padded = [{"input_ids": ids[i:i + 3], "attention_mask": mask[i:i + 3]} for i in range(0, len(seqs), 3)]
    alone = [{"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)} for s in seqs]
    for skip in (0, 2):
        a = collect_linear_fit(model, padded, 2, [1, 2], skip_first_tokens=skip, progress=False)
        b = collect_linear_fit(model, alone, 2, [1, 2], skip_first_tokens=skip, progress=False)
        assert a.tokens == b.tokens == sum(max(k - skip, 0) for k in lengths)
        for s in (1, 2):
            assert torch.allclose(a.xtx[s], b.xtx[s], rtol=1e-5, atol=1e-6)
            assert torch.allclose(a.solve(s), b.solve(s), rtol=1e-4, atol=1e-5)


def test_fit_token_mask_counts_positions_from_the_first_real_token():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    assert fit_token_mask(mask, 0).tolist() == mask.bool().tolist()
    assert fit_token_mask(mask, 1).long().tolist() == [[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]]


def test_angular_is_the_last_token_distance_of_the_block():
    model = tiny_model("llama", num_layers=5)
    calib = _calib(n=4, T=10)
    stats = collect_linear_fit(model, calib.batches(4), 2, [1, 3], progress=False)
    with torch.no_grad():
        hs = model(calib.input_ids, output_hidden_states=True).hidden_states
    cos = torch.nn.functional.cosine_similarity(hs[1][:, -1], hs[3][:, -1], dim=-1)
    assert stats.angular(1) == pytest.approx(float((torch.arccos(cos) / torch.pi).mean()), rel=1e-4)


# ---- choice, several blocks, held-out check, bad input ---------------------------------------------------------------

def test_block_zero_is_refused():
    with pytest.raises(StreamlineError, match="layer 0 has none"):
        replace_linear(tiny_model("llama"), _calib(), layers="0-1", progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"block_size": 1, "solver": "sgd"}, r"^solver='sgd': unknown"),
    ({"block_size": 1, "select": "cosine"}, r"^select='cosine': unknown"),
    ({"block_size": 4}, "block 1 of 1 needs a layer before it"),
    ({"block_size": 2, "layers": "1-3"}, r"^layers='1-3': names blocks of \[3\] layers but block_size is 2"),
    ({"layers": "2-9"}, "not in the model"),
    ({"block_size": 1, "skip_first_tokens": 24}, "no calibration tokens to fit on"),
    ({"block_size": 1, "heldout_samples": 10}, "the calibration has only 10 sequences"),
    ({}, "^block_size: give the number of layers"),
])
def test_bad_input_is_refused(kwargs, match):
    with pytest.raises(StreamlineError, match=match):
        replace_linear(tiny_model("llama"), _calib(), progress=False, **kwargs)


def test_calibration_is_required():
    with pytest.raises(StreamlineError, match="fitted on calibration data"):
        replace_linear(tiny_model("llama"), None, block_size=1)


def test_the_linear_kind_is_registered_and_needs_replace_linear():
    from hf_streamline.replacement import KINDS, replace_block

    assert "linear" in KINDS
    with pytest.raises(StreamlineError, match="replace_linear"):
        replace_block(tiny_model("llama"), 1, 1, "linear")


@pytest.mark.filterwarnings("ignore:block .*folded anyway")
def test_residual_choice_and_several_blocks_recapture():
    model = tiny_model("llama", num_layers=6)
    out, plan = replace_linear(model, _calib(n=12), block_size=1, blocks=2, heldout_samples=2, on_no_gain="keep",
                               progress=False)
    assert plan.num_layers_after == 4 and len(get_decoder_layers(out)) == 4
    first, second = plan.operations
    scores = plan.scores["linear_residual"]["per_block"]["1"]
    assert scores[0] is None  # block 0 is never a candidate
    assert first["layers"] == [1 + min(range(5), key=lambda i: scores[1:][i])]
    assert first["fold_into"] == first["layers"][0] - 1
    assert plan.steps and plan.steps[0]["step"] == 2  # the second block was chosen on the re-captured model
    assert set(first["layers"]).isdisjoint(second["layers"])
    assert sorted(plan.removed_layers) == sorted(first["layers"] + second["layers"])
    assert [layer.self_attn.layer_idx for layer in get_decoder_layers(out)] == [0, 1, 2, 3]


def test_angular_choice_is_the_replaceme_rule():
    model = tiny_model("llama", num_layers=6)
    _, plan = replace_linear(model, _calib(), block_size=2, select="angular", heldout_samples=0, progress=False)
    ang = plan.scores["angular"]["per_block"]["2"]
    s = plan.operations[0]["layers"][0]
    assert plan.metric == "angular" and s == 1 + min(range(len(ang) - 1), key=lambda i: ang[1:][i])


def test_a_fold_that_does_not_help_falls_back_to_removal(monkeypatch, stories_model, stories_text):
    from hf_streamline import remove_layers

    model, tok = stories_model
    calib = build_calibration(tok, str(stories_text), n_samples=12, seq_len=64)
    bad = lambda self, s, ridge=0.0: 3.0 * torch.randn(self.xtx[s].shape, dtype=torch.float64,  # noqa: E731
                                                       generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(LinearFitStats, "solve", bad)  # a map that hurts
    with pytest.warns(UserWarning, match="falling back to plain removal"):
        out, plan = replace_linear(copy.deepcopy(model), calib, layers="2-3", progress=False)
    op = plan.operations[0]
    assert op["folded"] is False and "does not lower held-out perplexity" in op["reason"]
    assert op["heldout_perplexity"]["folded"] > op["heldout_perplexity"]["removed"]
    assert LINEAR_MAPS_FILE not in plan.attachments
    removed = remove_layers(copy.deepcopy(model), [2, 3])
    ids = calib.input_ids[:2]
    with torch.no_grad():
        assert torch.equal(out(ids).logits, removed(ids).logits)
    with pytest.raises(StreamlineError, match="refusing"):
        replace_linear(copy.deepcopy(model), calib, layers="2-3", on_no_gain="error", progress=False)


# ---- the cosine solver ----------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:block .*folded anyway")
def test_cosine_solver_lowers_its_loss_and_stream_equals_cache(tmp_path):
    calib = _calib(n=9)
    runs = {}
    for mode in ("stream", "cache"):
        _, plan = replace_linear(tiny_model("llama", num_layers=5), calib, layers="2-3", solver="cosine",
                                 activations=mode, cache_dir=str(tmp_path), cosine_epochs=4, cosine_lr=1e-3,
                                 cosine_token_batch=32, heldout_samples=1, on_no_gain="keep", progress=False)
        runs[mode] = plan
    rec = runs["stream"].operations[0]["cosine"]
    assert rec["loss_last_epoch"] < rec["loss_first_epoch"]
    a = load_linear_maps(runs["stream"].attachments[LINEAR_MAPS_FILE])["block0"]
    b = load_linear_maps(runs["cache"].attachments[LINEAR_MAPS_FILE])["block0"]
    assert torch.allclose(a, b, atol=1e-6)
    assert list(tmp_path.iterdir()) == []  # the disk cache is removed
    assert "lstsq" in runs["stream"].operations[0]["heldout_perplexity"]


# ---- plan, apply, CLI, card -----------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:block .*folded anyway")
def test_plan_apply_reproduces_the_weights(tmp_path):
    base = tiny_model("gpt2", num_layers=6)
    out, plan = replace_linear(copy.deepcopy(base), _calib(n=12), block_size=1, blocks=2, heldout_samples=2,
                               on_no_gain="keep", progress=False)
    save_replaced(out, None, plan, tmp_path / "out")
    assert (tmp_path / "out" / LINEAR_MAPS_FILE).is_file()
    saved = json.loads((tmp_path / "out" / PLAN_FILENAME).read_text())
    assert saved["attachments"] == [LINEAR_MAPS_FILE] and saved["method"] == "replace_linear"
    again = apply_plan(copy.deepcopy(base), StreamlinePlan.load(tmp_path / "out"))
    a, b = out.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "out" / LINEAR_MAPS_FILE).unlink()
    with pytest.raises(StreamlineError, match=f"{LINEAR_MAPS_FILE}.*missing"):
        apply_plan(copy.deepcopy(base), StreamlinePlan.load(tmp_path / "out"))


def test_cli_replace_linear_apply_and_card(stories_dir, stories_text, tmp_path, capsys):
    from safetensors.torch import load_file

    from hf_streamline.cli import main

    out, again = tmp_path / "linear", tmp_path / "again"
    assert main(["replace", "--replacement", "linear", "--model", str(stories_dir), "--calibration", str(stories_text),
                 "--samples", "16", "--seq-len", "64", "--block-size", "1", "--skip-first-tokens", "1",
                 "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert "held-out calibration perplexity" in said and "saved a plain LlamaForCausalLM checkpoint" in said
    plan = json.loads((out / PLAN_FILENAME).read_text())
    op = plan["operations"][0]
    assert op["type"] == "replace_linear" and op["skip_first_tokens"] == 1 and plan["num_layers_after"] == 4
    card = (out / "README.md").read_text()
    assert "ReplaceMe" in card and "shopkhoev2025replaceme" in card and "folded into the MLP output projection" in card
    assert main(["apply", str(out), "--model", str(stories_dir), "--output", str(again)]) == 0
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (again / LINEAR_MAPS_FILE).read_bytes() == (out / LINEAR_MAPS_FILE).read_bytes()


def test_cli_refuses_train_data_and_missing_calibration(stories_dir, stories_text, tmp_path, capsys):
    from hf_streamline.cli import main

    common = ["replace", "--replacement", "linear", "--model", str(stories_dir), "--block-size", "1",
              "--output", str(tmp_path / "x")]
    assert main(common) != 0
    assert "pass --calibration (no --train-data is needed)" in capsys.readouterr().err
    assert main(common + ["--calibration", str(stories_text), "--train-data", str(stories_text)]) != 0
    assert "takes no --train-data" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---- a real model: the fold beats plain removal on held-out text -----------------------------------------------------

def test_stories_fold_lowers_heldout_perplexity_against_removal(stories_model, stories_text):
    from hf_streamline import remove_layers

    model, tok = stories_model
    docs = load_documents(str(stories_text))
    calib_docs, eval_docs = docs[:-2], docs[-2:]  # the evaluation stories are never fitted on
    calib = build_calibration(tok, calib_docs, n_samples=24, seq_len=64)
    eval_text = "\n".join(eval_docs)
    results = {}
    for block in ("1-1", "2-3"):
        lo, hi = (int(x) for x in block.split("-"))
        folded, plan = replace_linear(copy.deepcopy(model), calib, layers=block, skip_first_tokens=1,
                                      heldout_samples=4, progress=False)
        assert plan.operations[0]["folded"], plan.operations[0]
        removed = remove_layers(copy.deepcopy(model), list(range(lo, hi + 1)))
        results[block] = (evaluate_perplexity(folded, tok, eval_text, seq_len=64, progress=False),
                          evaluate_perplexity(removed, tok, eval_text, seq_len=64, progress=False))
    for block, (fold, removal) in results.items():
        assert fold < removal, f"block {block}: fold {fold:.3f} vs removal {removal:.3f}"


def test_cli_blocks_of_different_sizes_need_no_block_size(stories_dir, stories_text, tmp_path, capsys):
    from hf_streamline.cli import main

    out = tmp_path / "two"
    assert main(["replace", "--replacement", "linear", "--model", str(stories_dir), "--calibration", str(stories_text),
                 "--samples", "16", "--seq-len", "64", "--layers", "1-2,4-4", "--on-no-gain", "keep",
                 "--output", str(out)]) == 0
    plan = json.loads((out / PLAN_FILENAME).read_text())
    assert [op["layers"] for op in plan["operations"]] == [[1, 2], [4]] and plan["num_layers_after"] == 2
    capsys.readouterr()
    assert main(["replace", "--replacement", "linear", "--model", str(stories_dir), "--calibration", str(stories_text),
                 "--output", str(tmp_path / "x")]) != 0
    assert "--block-size: required unless --layers" in capsys.readouterr().err
    assert main(["replace", "--replacement", "decoder_layer", "--model", str(stories_dir), "--calibration",
                 str(stories_text), "--output", str(tmp_path / "y")]) != 0
    assert "--block-size: required" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_candidates_fitted_in_groups_choose_and_fold_the_same(monkeypatch, stories_model, stories_text):
    """Past STATS_BUDGET_BYTES the candidate blocks' float64 statistics are collected in groups (one candidate per
    pass here): the same scores, the same chosen block and the same map as one pass over all candidates."""
    import hf_streamline.replacement.linear as linear

    model, tok = stories_model
    calib = build_calibration(tok, str(stories_text), n_samples=12, seq_len=64)
    _, whole = replace_linear(copy.deepcopy(model), calib, block_size=1, heldout_samples=0, progress=False)
    d = model.config.hidden_size
    monkeypatch.setattr(linear, "STATS_BUDGET_BYTES", 2 * d * d * 8)  # one candidate per pass
    calls = []
    real = linear.collect_linear_fit
    monkeypatch.setattr(linear, "collect_linear_fit", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    _, grouped = replace_linear(copy.deepcopy(model), calib, block_size=1, heldout_samples=0, progress=False)
    assert [len(c) for c in calls] == [1] * (model.config.num_hidden_layers - 1)
    assert grouped.operations[0]["layers"] == whole.operations[0]["layers"]
    for metric in ("linear_residual", "angular"):
        got, want = grouped.scores[metric]["per_block"]["1"], whole.scores[metric]["per_block"]["1"]
        assert got[0] is None and want[0] is None and got[1:] == pytest.approx(want[1:], rel=1e-9)
    a = load_linear_maps(whole.attachments[LINEAR_MAPS_FILE])
    b = load_linear_maps(grouped.attachments[LINEAR_MAPS_FILE])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
