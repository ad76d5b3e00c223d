"""The window search's similarity criteria: output_cosine (paper), token_cosine, logits_kl, cka (issue 13 §3)."""

from __future__ import annotations

import math

import pytest
import torch
from test_merging_search import ids, perturbed
from tiny_models import tiny_model

from hf_streamline import StreamlineError
from hf_streamline.merging import (
    MergeConfig,
    WindowSearch,
    merge_plan,
    search_merge_windows,
)
from hf_streamline.merging.similarity import (
    OUTPUT_SIMILARITIES,
    OutputCosine,
    TokenCosine,
    output_head,
    skip_first_positions,
)

CRITERIA = [("output_cosine", {}), ("token_cosine", {}), ("token_cosine", {"skip_first_tokens": 0}),
            ("logits_kl", {}), ("logits_kl", {"kl_topk": 0}), ("logits_kl", {"kl_topk": 7}),
            ("logits_kl", {"skip_first_tokens": 2}), ("cka", {})]


@pytest.fixture(scope="module")
def llama10():
    return perturbed("llama", 10, seed=0)


def batches_of(x, size=2):
    return [{"input_ids": x[i:i + size], "attention_mask": torch.ones_like(x[i:i + size])}
            for i in range(0, x.shape[0], size)]


def search_for(model, similarity, **kw):
    s = WindowSearch(model, batches_of(ids()), similarity=similarity, progress=False, **kw)
    s.prepare()
    return s


def test_every_criterion_is_registered():
    assert {"output_cosine", "token_cosine", "logits_kl", "cka"} <= set(OUTPUT_SIMILARITIES)


@pytest.mark.parametrize("similarity,kw", CRITERIA)
def test_unchanged_model_scores_one_and_a_longer_window_scores_lower(llama10, similarity, kw):
    s = search_for(llama10, similarity, **kw)
    try:
        assert s._measure(0) == pytest.approx(1.0, abs=1e-9)  # nothing merged: identical outputs
        short, longer = s.trial([], 7, 8)[0], s.trial([], 2, 8)[0]  # [2..8] contains [7..8]: strictly more removed
    finally:
        s.restore()
    assert 0.0 < longer < short < 1.0, (longer, short)


def test_topk_kl_is_exact_at_the_full_vocabulary_and_a_lower_bound_below(llama10):
    def mean_kl(**kw):
        s = search_for(llama10, "logits_kl", **kw)
        try:
            return -math.log(s.trial([], 3, 8)[0])
        finally:
            s.restore()

    full, all_ids, few = mean_kl(kl_topk=0), mean_kl(kl_topk=128), mean_kl(kl_topk=5)
    assert all_ids == pytest.approx(full, rel=1e-3, abs=1e-6)  # float32 full-KL helper vs float64
    assert 0.0 < few <= full + 1e-9


def test_logits_kl_matches_the_kl_of_the_real_logits(llama10):
    """exp(-KL) of the trial equals exp(-KL) computed from the two models' own logits (window [4..8] dropped)."""
    import copy

    from hf_streamline.merging import merge_layers

    x = ids()
    s = search_for(llama10, "logits_kl", kl_topk=0, rule="drop")
    try:
        sim = s.trial([], 4, 8)[0]
    finally:
        s.restore()
    merged = merge_layers(copy.deepcopy(llama10), [[4, 5, 6, 7, 8]], "drop")
    with torch.no_grad():
        p = torch.log_softmax(llama10(input_ids=x).logits.double(), -1)
        q = torch.log_softmax(merged(input_ids=x).logits.double(), -1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert sim == pytest.approx(math.exp(-kl), rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_output_head_reproduces_the_models_logits(arch):
    model = tiny_model(arch, 3)
    if arch == "gemma2":
        model.config.final_logit_softcapping = 0.5  # strong capping: it must be applied
    x = ids(rows=2, T=10)
    with torch.no_grad():
        hidden = model.model(input_ids=x).last_hidden_state
        assert torch.allclose(output_head(model)(hidden), model(input_ids=x).logits, atol=1e-5)


def test_a_massive_first_token_decides_the_flattened_cosine_not_the_token_cosine():
    """The failure mode of output_cosine: one huge, unchanged first-token vector hides that every other token moved."""
    T, d = 16, 8
    ref = torch.randn(1, T, d, generator=torch.Generator().manual_seed(0))
    out = -ref.clone()  # every token reversed ...
    ref[0, 0] = out[0, 0] = 1e3  # ... except a massive first token, identical in both
    mask = torch.ones(1, T, dtype=torch.long)
    flat, tok = OutputCosine(), TokenCosine()
    flat.add(out, ref, mask, 0)
    tok.add(out, ref, skip_first_positions(mask, 1), 0)
    assert flat.value() > 0.99 and tok.value() == pytest.approx(-1.0)


def test_skip_first_positions_counts_real_tokens():
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # second row left-padded
    assert skip_first_positions(mask, 0) is mask
    assert skip_first_positions(mask, 2).tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]
    assert skip_first_positions(mask, 9).sum() == 0


def test_criterion_defaults_for_skipping(llama10):
    assert search_for(llama10, "token_cosine").skip_first_tokens == TokenCosine.default_skip_first_tokens == 1
    assert search_for(llama10, "logits_kl").skip_first_tokens == 0
    assert search_for(llama10, "output_cosine", skip_first_tokens=3).skip_first_tokens == 3


def test_skipped_tokens_do_not_count(llama10):
    r = search_merge_windows(llama10, ids(), threshold=0.5, similarity="token_cosine", skip_first_tokens=3,
                             batch_size=2, progress=False)
    assert r.similarity_options == {"skip_first_tokens": 3}
    s = search_for(llama10, "token_cosine", skip_first_tokens=16)  # every token skipped: nothing is compared
    try:
        assert s._measure(0) == 0.0
    finally:
        s.restore()


@pytest.mark.parametrize("similarity", ["token_cosine", "logits_kl"])
@pytest.mark.parametrize("k", [2, 5])
def test_target_mode_removes_exactly_k(llama10, similarity, k):
    r = search_merge_windows(llama10, ids(), remove=k, similarity=similarity, batch_size=2, progress=False)
    assert len(r.removed_layers) == k and r.similarity == similarity
    assert all(w["score"] > r.threshold for w in r.windows)
    lo, hi = r.threshold_interval
    assert 0.0 <= lo <= r.threshold <= hi <= 1.0


def test_efficient_logits_kl_search_equals_naive():
    model = perturbed("qwen3", 8, seed=1)
    x = ids(1, rows=4, T=12)
    eff = search_merge_windows(model, x, remove=3, similarity="logits_kl", batch_size=2, progress=False)
    naive = search_merge_windows(model, x, remove=3, similarity="logits_kl", batch_size=2, naive=True,
                                 progress=False)
    assert [w["layers"] for w in eff.windows] == [w["layers"] for w in naive.windows]
    for a, b in zip(eff.trials, naive.trials):
        assert a["similarity"] == pytest.approx(b["similarity"], abs=1e-7)


def test_plan_records_the_criterion_and_its_options(llama10):
    r = search_merge_windows(llama10, ids(), remove=2, similarity="logits_kl", kl_topk=16, batch_size=2,
                             progress=False)
    plan = merge_plan(r, "tiny")
    info = plan.extra["merge"]
    assert plan.metric == "logits_kl" and info["similarity_options"] == {"skip_first_tokens": 0, "kl_topk": 16}


@pytest.mark.parametrize("kw,match", [({"skip_first_tokens": -1}, r"skip_first_tokens=-1: must be >= 0"),
                                      ({"kl_topk": -3}, "kl_topk=-3: must be >= 0")])
def test_bad_criterion_options(llama10, kw, match):
    with pytest.raises(StreamlineError, match=match):
        search_merge_windows(llama10, ids(), remove=2, progress=False, **kw)


def test_defaults_are_a_registered_rule_and_criterion():
    from hf_streamline.merging import MERGE_RULES

    c = MergeConfig()
    assert c.rule in MERGE_RULES and c.similarity in OUTPUT_SIMILARITIES


def test_marginal_scoring_thresholds_each_windows_own_cost(llama10):
    r = search_merge_windows(llama10, ids(), threshold=0.998, similarity="logits_kl", scoring="marginal",
                             batch_size=2, progress=False)
    assert r.scoring == "marginal" and len(r.windows) >= 2
    # each window was measured with the windows above it merged: its score is its similarity over theirs
    previous = 1.0
    for w in r.windows:
        assert w["score"] == pytest.approx(w["similarity"] / previous, rel=1e-12)
        assert w["score"] > 0.998
        previous = w["similarity"]
    cumulative = search_merge_windows(llama10, ids(), threshold=0.998, similarity="logits_kl", scoring="cumulative",
                                      batch_size=2, progress=False)
    assert all(t["score"] == t["similarity"] for t in cumulative.trials)
    # the marginal search keeps merging where the cumulative one has used up its budget
    assert len(r.removed_layers) >= len(cumulative.removed_layers)


@pytest.mark.parametrize("k", [3, 6])
def test_marginal_target_mode_removes_exactly_k(llama10, k):
    r = search_merge_windows(llama10, ids(), remove=k, similarity="logits_kl", scoring="marginal", batch_size=2,
                             progress=False)
    assert len(r.removed_layers) == k and all(w["score"] > r.threshold for w in r.windows)


def test_unknown_scoring(llama10):
    with pytest.raises(StreamlineError, match="config.scoring='local': unknown"):
        search_merge_windows(llama10, ids(), remove=2, scoring="local", progress=False)
