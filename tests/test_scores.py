"""Scores: streaming hook statistics agree with direct computations; registry; real-model sanity on stories260K."""

from __future__ import annotations

import math

import pytest
import torch

from hf_streamline import SCORERS, StreamlineError, build_calibration, compute_scores, evaluate_perplexity
from hf_streamline.calibration import CalibrationConfig, CalibrationData
from hf_streamline.capture import LayerHooks, collect_block_similarity
from hf_streamline.pruning import remove_layers
from tiny_models import tiny_model


def _calib(n=6, T=10, seed=0, pad_rows=()):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (n, T), generator=g)
    mask = torch.ones_like(ids)
    for r in pad_rows:  # right padding
        mask[r, T - 4:] = 0
        ids[r, T - 4:] = 0
    return CalibrationData(ids, mask, CalibrationConfig(source="<test>", n_samples=n, seq_len=T))


def _layer_io(model, ids, mask):
    """Direct per-layer inputs and outputs (hooks, kept whole) for a reference computation."""
    ins, outs = {}, {}
    with LayerHooks(model, lambda i, h: ins.__setitem__(i, h.detach().clone()),
                    lambda i, h: outs.__setitem__(i, h.detach().clone())), torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    return ins, outs


def test_layer_hooks_on_a_subset_of_layers_see_what_hooks_on_all_of_them_see():
    model = tiny_model("llama", num_layers=4)
    calib = _calib()
    ins, outs = _layer_io(model, calib.input_ids, calib.attention_mask)
    sub_in, sub_out = {}, {}
    with LayerHooks(model, lambda i, h: sub_in.__setitem__(i, h.detach().clone()),
                    lambda i, h: sub_out.__setitem__(i, h.detach().clone()), layers=[2]), torch.no_grad():
        model(input_ids=calib.input_ids, attention_mask=calib.attention_mask)
    assert set(sub_in) == set(sub_out) == {2}
    assert torch.equal(sub_in[2], ins[2]) and torch.equal(sub_out[2], outs[2])
    # the hooks are gone after the block
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in model.model.layers)


def test_streaming_block_similarity_matches_direct_computation():
    model = tiny_model("llama", num_layers=4)
    calib = _calib(pad_rows=(1, 4))
    stats = collect_block_similarity(model, calib.batches(4), progress=False)  # batches of 4 and 2
    ins, outs = _layer_io(model, calib.input_ids, calib.attention_mask)
    m = calib.attention_mask.bool()
    last = calib.attention_mask.sum(1) - 1
    for l in range(4):
        for e in range(l, 4):
            cos = torch.nn.functional.cosine_similarity(ins[l], outs[e], dim=-1)
            assert stats.mean_cos()[l, e].item() == pytest.approx(cos[m].mean().item(), abs=1e-5)
            last_cos = cos[torch.arange(6), last]
            ang = (torch.arccos(last_cos.clamp(-1, 1)) / math.pi).mean().item()
            assert stats.mean_angular(last_token=True)[l, e].item() == pytest.approx(ang, abs=1e-5)


def test_last_block_uses_pre_norm_layer_output_not_output_hidden_states():
    """output_hidden_states[-1] is after the final norm: the last layer's score must come from its hook."""
    model = tiny_model("llama", num_layers=4)
    with torch.no_grad():  # a trained final norm has non-uniform weights (all-ones would keep cosines unchanged)
        model.model.norm.weight.copy_(torch.linspace(0.1, 3.0, model.config.hidden_size))
    calib = _calib()
    res = compute_scores(model, ["block_influence"], calib, progress=False)["block_influence"]
    with torch.no_grad():
        hs = model(input_ids=calib.input_ids, output_hidden_states=True).hidden_states
    ins, outs = _layer_io(model, calib.input_ids, calib.attention_mask)
    direct = 1 - torch.nn.functional.cosine_similarity(ins[3], outs[3], dim=-1).mean().item()
    post_norm = 1 - torch.nn.functional.cosine_similarity(hs[3], hs[4], dim=-1).mean().item()
    assert res.per_layer[3] == pytest.approx(direct, abs=1e-5)
    assert abs(direct - post_norm) > 1e-3  # the tuple would have given a different (wrong) number


def test_padding_is_ignored():
    model = tiny_model("llama", num_layers=3)
    calib = _calib(n=2, T=10, pad_rows=(1,))
    padded = compute_scores(model, ["block_influence", "angular"], calib, progress=False)
    # the same two sequences without the padded positions, scored one by one
    ref_bi, ref_ang, n_tok = torch.zeros(3), torch.zeros(3), 0
    for r in range(2):
        L = int(calib.attention_mask[r].sum())
        one = CalibrationData(calib.input_ids[r:r + 1, :L], calib.attention_mask[r:r + 1, :L], calib.config)
        stats = collect_block_similarity(model, one.batches(1), progress=False)
        ref_bi += torch.tensor([stats.cos_sum[l, l].item() for l in range(3)])
        ref_ang += torch.tensor([stats.last_ang_sum[l, l].item() for l in range(3)])
        n_tok += L
    assert padded["block_influence"].per_layer == pytest.approx((1 - ref_bi / n_tok).tolist(), abs=1e-5)
    assert padded["angular"].per_layer == pytest.approx((ref_ang / 2).tolist(), abs=1e-5)


def test_all_block_sizes_from_one_pass():
    model = tiny_model("llama", num_layers=5)
    calib = _calib()
    calls = []
    layer0 = model.model.layers[0]
    h = layer0.register_forward_hook(lambda *a: calls.append(1))
    res = compute_scores(model, ["block_influence", "angular", "block_cosine"], calib, block_sizes=[1, 2, 3, 4],
                         batch_size=6, progress=False)
    h.remove()
    assert len(calls) == 1  # one forward pass for three metrics and four block sizes
    assert sorted(res["angular"].per_block) == [1, 2, 3, 4]
    assert len(res["block_cosine"].per_block[3]) == 3
    # block_cosine's n=1 values are 1 - block_influence
    assert [1 - v for v in res["block_cosine"].per_layer] == pytest.approx(res["block_influence"].per_layer, abs=1e-9)


def test_registry_has_every_metric_and_rejects_unknown():
    assert {"block_influence", "angular", "block_cosine", "magnitude", "taylor", "perplexity", "reverse_order",
            "random"} <= set(SCORERS)
    with pytest.raises(StreamlineError, match="unknown metric 'nope'"):
        compute_scores(tiny_model("llama"), ["nope"], None)
    with pytest.raises(StreamlineError, match="need calibration"):
        compute_scores(tiny_model("llama"), ["taylor"], None)


def test_data_free_metrics():
    model = tiny_model("llama", num_layers=4)
    res = compute_scores(model, ["magnitude", "reverse_order", "random"], None, seed=3)
    l1 = [sum(p.abs().sum().item() for p in layer.parameters()) for layer in model.model.layers]
    assert res["magnitude"].per_layer == pytest.approx(l1, rel=1e-5)
    assert res["reverse_order"].layer_importance() == [3.0, 2.0, 1.0, 0.0]  # the last layer goes first
    again = compute_scores(model, ["random"], None, seed=3)["random"].per_layer
    assert res["random"].per_layer == again
    assert compute_scores(model, ["random"], None, seed=4)["random"].per_layer != again


def test_taylor_matches_manual_gradient_and_restores_state():
    model = tiny_model("llama", num_layers=3)
    calib = _calib(n=4)
    res = compute_scores(model, ["taylor"], calib, batch_size=4, progress=False)["taylor"]
    labels = calib.input_ids
    loss = model(input_ids=calib.input_ids, attention_mask=calib.attention_mask, labels=labels).loss
    loss.backward()
    manual = [sum((p.grad * p).abs().sum().item() for p in layer.parameters()) for layer in model.model.layers]
    assert res.per_layer == pytest.approx(manual, rel=1e-4)
    model.zero_grad()
    assert all(p.requires_grad for p in model.parameters())


def test_bf16_scores_close_to_fp32():
    model = tiny_model("llama", num_layers=4)
    calib = _calib()
    fp32 = compute_scores(model, ["block_influence"], calib, progress=False)["block_influence"].per_layer
    bf16 = compute_scores(model.to(torch.bfloat16), ["block_influence"], calib, progress=False)["block_influence"].per_layer
    assert all(math.isfinite(v) for v in bf16)
    assert bf16 == pytest.approx(fp32, abs=0.02)


def test_scores_on_model_placed_with_device_map(tmp_path):
    """Accelerate-dispatched model (some layers offloaded to disk) gives the same scores."""
    from accelerate import dispatch_model

    model = tiny_model("llama", num_layers=4)
    calib = _calib()
    ref = compute_scores(model, ["block_influence", "angular"], calib, progress=False)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}
    dispatched = dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    got = compute_scores(dispatched, ["block_influence", "angular"], calib, progress=False)
    for m in ref:
        assert got[m].per_layer == pytest.approx(ref[m].per_layer, abs=1e-6)


# --- the real stories260K model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stories_calib(stories_model, data_dir):
    _, tok = stories_model
    return build_calibration(tok, str(data_dir / "text" / "stories260k_samples.txt"),
                             CalibrationConfig(n_samples=16, seq_len=64, seed=0))


def test_stories260k_layer0_ranked_most_important(stories_model, stories_calib):
    model, _ = stories_model
    res = compute_scores(model, ["block_influence", "angular", "block_cosine", "perplexity"], stories_calib,
                         progress=False)
    for metric, r in res.items():
        imp = r.layer_importance()
        assert max(range(len(imp)), key=imp.__getitem__) == 0, (metric, imp)


def test_stories260k_removing_least_important_costs_less_than_layer0(stories_model, stories_calib, data_dir):
    import copy

    model, tok = stories_model
    bi = compute_scores(model, ["block_influence"], stories_calib, progress=False)["block_influence"]
    least = min(range(len(bi.per_layer)), key=bi.per_layer.__getitem__)
    assert least != 0
    text = data_dir / "text" / "stories260k_samples.txt"
    ppl = {}
    for layer in (least, 0):
        m = copy.deepcopy(model)
        remove_layers(m, [layer])
        ppl[layer] = evaluate_perplexity(m, tok, text, seq_len=128, progress=False)
    dense = evaluate_perplexity(model, tok, text, seq_len=128, progress=False)
    assert dense < ppl[least] < ppl[0]
