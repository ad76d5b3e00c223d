"""SLM window search: rules of the search, target mode, in-place restore, efficient == naive, plain checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from hf_streamline import StreamlineError, StreamlinePlan, apply_plan, build_calibration, save_pruned
from hf_streamline.architecture import get_decoder_layers
from hf_streamline.merging import MergeConfig, WindowSearch, search_merge_windows, slm_merge
from hf_streamline.merging.base import parameter_kinds
from tiny_models import tiny_model

CALIB_TEXT = ("wikipedia_30_articles.txt",)


def perturbed(arch: str, layers: int = 10, seed: int = 0):
    """Tiny random model with non-trivial norms (random init leaves them all equal to one)."""
    model = tiny_model(arch, num_layers=layers, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in get_decoder_layers(model):
            kinds = parameter_kinds(layer)
            for n, p in layer.named_parameters():
                if kinds[n] == "norm":
                    p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def ids(seed: int = 0, rows: int = 4, T: int = 16):
    return torch.randint(3, 128, (rows, T), generator=torch.Generator().manual_seed(seed))


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def llama10():
    return perturbed("llama", 10, seed=0)


def test_never_merges_the_last_layer_and_respects_the_threshold(llama10):
    for t in (0.05, 0.5, 0.8, 0.95):
        r = search_merge_windows(llama10, ids(), threshold=t, batch_size=2, progress=False)
        assert all(9 not in w["layers"] for w in r.windows)
        assert all(w["score"] > t for w in r.windows)
        for trial in r.trials:
            assert 9 not in range(trial["layers"][0], trial["layers"][1] + 1)
            assert trial["accepted"] == (trial["score"] is not None and trial["score"] > t)
    low = search_merge_windows(llama10, ids(), threshold=1e-6, batch_size=2, progress=False)
    assert low.removed_layers and max(low.removed_layers) <= 8


def test_windows_are_disjoint_runs_found_top_down(llama10):
    r = search_merge_windows(llama10, ids(), threshold=0.7, batch_size=2, progress=False)
    tops = [w["layers"][-1] for w in r.windows]
    assert tops == sorted(tops, reverse=True)
    seen = [i for w in r.windows for i in w["layers"]]
    assert len(seen) == len(set(seen))
    # the last committed window was measured with every other window merged: it is the final model's similarity
    assert r.final_similarity == r.windows[-1]["similarity"]


def test_higher_thresholds_never_merge_more_on_a_real_model(stories_model):
    model, tok = stories_model
    from hf_streamline.data import bundled_path

    calib = build_calibration(tok, str(bundled_path("train/" + "/".join(CALIB_TEXT))), n_samples=8, seq_len=64)
    for rule in ("top_weights", "rdsc"):
        search = WindowSearch(model, list(calib.batches(8)), rule=rule, progress=False)
        search.prepare()
        counts = [search.run(t / 20).removed for t in range(1, 21)]
        assert counts[0] >= 2 and counts[-1] == 0, counts
        assert all(a >= b for a, b in zip(counts, counts[1:])), (rule, counts)


@pytest.mark.parametrize("rule,ks", [("rdsc", (1, 4, 8)), ("top_weights", (3,))])
def test_target_mode_reaches_exactly_k(llama10, rule, ks):
    for k in ks:
        r = search_merge_windows(llama10, ids(), remove=k, rule=rule, batch_size=2, progress=False)
        assert len(r.removed_layers) == k, (k, r.windows)
        assert r.mode == "target" and r.target == k and 0.0 <= r.threshold <= 1.0
        assert all(w["score"] > r.threshold for w in r.windows)
        assert r.bisection and r.bisection[0]["threshold"] == 0.0


def test_ratio_target(llama10):
    r = search_merge_windows(llama10, ids(), ratio=0.3, batch_size=2, progress=False)
    assert len(r.removed_layers) == 3


def test_search_restores_the_model_bit_identically(llama10):
    before = state(llama10)
    modules = list(get_decoder_layers(llama10))
    for kw in ({"threshold": 0.6}, {"remove": 5}, {"threshold": 0.6, "reuse_hidden": False},
               {"threshold": 0.6, "rule": "rdsc", "similarity": "cka"}):
        search_merge_windows(llama10, ids(), batch_size=2, progress=False, **kw)
        assert_same_state(before, state(llama10))
        assert list(get_decoder_layers(llama10)) == modules
        assert not any(m._forward_pre_hooks or m._forward_hooks for m in modules)


def test_search_restores_the_model_after_an_error(llama10, monkeypatch):
    before = state(llama10)
    calls = {"n": 0}
    original = WindowSearch._measure

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(self, *a, **k)

    monkeypatch.setattr(WindowSearch, "_measure", failing)
    with pytest.raises(RuntimeError, match="boom"):
        search_merge_windows(llama10, ids(), threshold=0.3, batch_size=2, progress=False)
    assert_same_state(before, state(llama10))
    assert all(type(m).__name__ == "LlamaDecoderLayer" for m in get_decoder_layers(llama10))


@pytest.mark.parametrize("arch,threshold", [("llama", 0.8), ("gemma3", 0.6), ("gpt_neox", 0.8), ("qwen3", 0.8)])
def test_efficient_search_equals_naive_with_fewer_evaluations(arch, threshold):
    model = perturbed(arch, 8, seed=1)
    batches = ids(1, rows=4, T=12)
    eff = search_merge_windows(model, batches, threshold=threshold, batch_size=2, progress=False)
    naive = search_merge_windows(model, batches, threshold=threshold, batch_size=2, naive=True, progress=False)
    full = search_merge_windows(model, batches, threshold=threshold, batch_size=2, reuse_hidden=False, progress=False)
    assert eff.windows, "pick a threshold that merges something"
    for other in (naive, full):
        assert [w["layers"] for w in other.windows] == [w["layers"] for w in eff.windows]
        for a, b in zip(eff.trials, other.trials):
            assert a["layers"] == b["layers"]
            assert a["similarity"] == pytest.approx(b["similarity"], abs=1e-6)
    assert eff.evaluations["total"] < full.evaluations["total"] == naive.evaluations["total"]
    # the naive count is measured by the naive search and predicted by the efficient one
    assert eff.evaluations["naive_total"] == naive.evaluations["total"]


def test_padding_is_excluded_from_the_similarity(llama10):
    x = ids(3, rows=2, T=12)
    mask = torch.ones_like(x)
    mask[1, 8:] = 0
    padded = x.clone()
    padded[1, 8:] = 5
    a = search_merge_windows(llama10, [{"input_ids": x, "attention_mask": mask}], threshold=0.5, progress=False)
    b = search_merge_windows(llama10, [{"input_ids": padded, "attention_mask": mask}], threshold=0.5, progress=False)
    assert [t["similarity"] for t in a.trials] == pytest.approx([t["similarity"] for t in b.trials], abs=1e-9)


def test_cka_similarity_search(llama10):
    r = search_merge_windows(llama10, ids(rows=4, T=16), threshold=0.8, similarity="cka", batch_size=2,
                             progress=False)
    assert all(w["score"] > 0.8 for w in r.windows)
    assert all(t["similarity"] <= 1.0 + 1e-9 for t in r.trials)


@pytest.mark.parametrize("kw,match", [
    ({"threshold": 0.0}, r"must be in \(0, 1\]"),
    ({"threshold": 1.5}, r"must be in \(0, 1\]"),
    ({"threshold": -0.2}, r"must be in \(0, 1\]"),
    ({"remove": 9}, "at most 8 can go"),
    ({"remove": 0}, "at least one"),
    ({"ratio": 1.2}, "strictly between 0 and 1"),
    ({"threshold": 0.5, "remove": 2}, "exactly one"),
    ({}, "exactly one"),
    ({"threshold": 0.5, "rule": "sum"}, "unknown merge rule"),
    ({"threshold": 0.5, "similarity": "l2"}, "config.similarity='l2': unknown"),
])
def test_bad_input(llama10, kw, match):
    with pytest.raises(StreamlineError, match=match):
        search_merge_windows(llama10, ids(), progress=False, **kw)


def test_unreachable_target_says_what_was_reached():
    model = tiny_model("qwen2_moe", num_layers=6)  # dense and MoE layers alternate: no window can merge
    with pytest.raises(StreamlineError, match="cannot merge away 2 layers.*merges 0"):
        search_merge_windows(model, ids(), remove=2, progress=False)
    r = search_merge_windows(model, ids(), threshold=0.1, progress=False)
    assert r.windows == [] and all("different parameters" in t["reason"] for t in r.trials)


def test_no_calibration_is_an_error(llama10):
    with pytest.raises(StreamlineError, match="calibration"):
        search_merge_windows(llama10, None, threshold=0.5)


def test_too_few_layers():
    with pytest.raises(StreamlineError, match="at least 3"):
        search_merge_windows(tiny_model("llama", 2), ids(), threshold=0.5, progress=False)


ROUND_TRIP_ARCHS = ["llama", "qwen3", "gemma3", "gpt_neox"]


@pytest.fixture(scope="module")
def merged_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("merged")
    out = {}
    x = ids(7, rows=2, T=12)
    for arch in ROUND_TRIP_ARCHS:
        base = perturbed(arch, 8, seed=2)
        model = perturbed(arch, 8, seed=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, plan = slm_merge(model, ids(2), MergeConfig(remove=3, rule="top_weights", batch_size=2,
                                                               progress=False), base_model=f"tiny-{arch}")
        folder = save_pruned(model, None, plan, root / arch)
        with torch.no_grad():
            logits = model(input_ids=x).logits
        out[arch] = {"folder": folder, "model": model, "plan": plan, "base": base, "logits": logits, "ids": x}
    return out


@pytest.mark.parametrize("arch", ROUND_TRIP_ARCHS)
def test_merged_model_and_plan(merged_folders, arch):
    r = merged_folders[arch]
    plan = StreamlinePlan.load(r["folder"])
    assert plan.method == "merge" and len(plan.removed_layers) == 3 and plan.num_layers_after == 5
    assert all(op["type"] == "merge" and op["rule"] == "top_weights" for op in plan.operations)
    info = plan.extra["merge"]
    assert info["rule"] == "top_weights" and info["mode"] == "target" and 0 <= info["threshold"] <= 1
    assert info["evaluations"]["total"] < info["evaluations"]["naive_total"]
    assert r["model"].config.num_hidden_layers == 5
    config = json.loads((r["folder"] / "config.json").read_text())
    assert config.get("num_hidden_layers") == 5 and "auto_map" not in config
    # applying the saved plan to the base model reproduces the merged model exactly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        replayed = apply_plan(r["base"], plan)
    assert_same_state(state(replayed), state(r["model"]))
    with torch.no_grad():
        assert torch.equal(replayed(input_ids=r["ids"]).logits, r["logits"])


def test_merged_checkpoints_reload_in_a_fresh_process(merged_folders, tmp_path):
    folders = {a: str(r["folder"]) for a, r in merged_folders.items()}
    x = merged_folders["llama"]["ids"]
    torch.save(x, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM
        assert "hf_streamline" not in sys.modules
        folders = json.loads({json.dumps(json.dumps(folders))})
        x = torch.load({str(tmp_path / 'ids.pt')!r})
        out = {{}}
        for arch, folder in folders.items():
            m = AutoModelForCausalLM.from_pretrained(folder).eval()
            with torch.no_grad():
                out[arch] = {{"logits": m(input_ids=x).logits, "layers": m.config.num_hidden_layers,
                              "gen": m.generate(input_ids=x, max_new_tokens=4, do_sample=False, pad_token_id=0)}}
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    for arch, r in merged_folders.items():
        assert out[arch]["layers"] == 5, arch
        assert torch.equal(out[arch]["logits"], r["logits"]), arch
        assert out[arch]["gen"].shape[1] == x.shape[1] + 4
