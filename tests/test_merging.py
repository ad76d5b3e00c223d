"""Merge rules (numerically, on every parameter kind), window merging, the ``merge`` plan operation."""

from __future__ import annotations

import warnings

import pytest
import torch

from hf_streamline import StreamlineError, StreamlinePlan, apply_plan
from hf_streamline.architecture import get_decoder_layers
from hf_streamline.merging import MERGE_RULES, merge_layers, merged_parameters, parameter_kinds
from hf_streamline.merging.base import NORM_KIND, WEIGHT_KIND, is_norm_module
from tiny_models import tiny_model

WINDOW = [1, 2, 3]


def randomised(arch: str, layers: int = 5, seed: int = 0):
    """A tiny model whose every layer parameter (norms included) is distinct, so a rule mix-up shows."""
    model = tiny_model(arch, num_layers=layers, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for layer in get_decoder_layers(model):
            for p in layer.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def window_tensors(model, window=WINDOW):
    layers = get_decoder_layers(model)
    return {name: [dict(layers[i].named_parameters())[name].detach().clone() for i in window]
            for name, _ in layers[window[0]].named_parameters()}


def test_rules_are_registered():
    assert {"rdsc", "top_weights", "average", "drop"} <= set(MERGE_RULES)


@pytest.mark.parametrize("arch,norms,weights", [
    ("qwen2", {"input_layernorm.weight"}, {"self_attn.q_proj.bias", "self_attn.q_proj.weight", "mlp.down_proj.weight"}),
    ("qwen3", {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}, {"self_attn.o_proj.weight"}),
    ("gemma3", {"pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"}, {"mlp.gate_proj.weight"}),
    ("gpt_neox", {"input_layernorm.weight", "input_layernorm.bias"}, {"attention.query_key_value.bias"}),
    ("gpt2", {"ln_1.weight", "ln_2.bias"}, {"attn.c_attn.weight", "attn.c_attn.bias"}),
])
def test_parameter_kinds_are_found_generically(arch, norms, weights):
    kinds = parameter_kinds(get_decoder_layers(tiny_model(arch))[0])
    for n in norms:
        assert kinds[n] == NORM_KIND, n
    for n in weights:
        assert kinds[n] == WEIGHT_KIND, n


def test_moe_expert_tensors_are_weights():
    kinds = parameter_kinds(get_decoder_layers(tiny_model("mixtral"))[0])
    expert = [n for n in kinds if "experts" in n]
    assert expert and all(kinds[n] == WEIGHT_KIND for n in expert)
    assert not is_norm_module(torch.nn.Linear(3, 3))
    assert is_norm_module(torch.nn.LayerNorm(3))


ARCHS_FOR_RULES = ["llama", "qwen2", "qwen3", "gemma3", "gpt_neox", "mixtral"]


@pytest.mark.parametrize("arch", ARCHS_FOR_RULES)
def test_top_weights_is_top_matmuls_with_bottom_norms(arch):
    model = randomised(arch)
    layers = get_decoder_layers(model)
    kinds = parameter_kinds(layers[WINDOW[0]])
    params = window_tensors(model)
    merged = merged_parameters([layers[i] for i in WINDOW], "top_weights")
    assert set(merged) == set(params)
    assert {kinds[n] for n in merged} == {NORM_KIND, WEIGHT_KIND}
    for name, value in merged.items():
        bottom, top = params[name][0], params[name][-1]
        expected = bottom if kinds[name] == NORM_KIND else top
        assert torch.equal(value, expected), name
        assert not torch.equal(bottom, top), name  # the check could fail


def test_top_weights_matches_the_released_in_place_loop():
    """The released code: w_bottom += (w_k - w_bottom) for k = bottom..top on each matmul; norms untouched."""
    model = randomised("llama")
    layers = get_decoder_layers(model)
    kinds = parameter_kinds(layers[1])
    emulated = {n: p.detach().clone() for n, p in layers[WINDOW[0]].named_parameters()}
    for k in WINDOW:
        other = dict(layers[k].named_parameters())
        for n in emulated:
            if kinds[n] == WEIGHT_KIND:
                emulated[n].add_(other[n].detach() - emulated[n])
    merged = merged_parameters([layers[i] for i in WINDOW], "top_weights")
    for n in merged:
        torch.testing.assert_close(merged[n], emulated[n], rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS_FOR_RULES)
def test_rdsc_average_drop_equal_their_formulas(arch):
    model = randomised(arch)
    layers = get_decoder_layers(model)
    params = window_tensors(model)
    got = {r: merged_parameters([layers[i] for i in WINDOW], r) for r in ("rdsc", "average", "drop")}
    for name, ts in params.items():
        base = ts[0].double()
        rdsc = base + sum(t.double() - base for t in ts[1:])
        torch.testing.assert_close(got["rdsc"][name].double(), rdsc, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["average"][name].double(), sum(t.double() for t in ts) / len(ts),
                                   rtol=1e-5, atol=1e-6)
        assert torch.equal(got["drop"][name], ts[0])
        assert not torch.allclose(got["rdsc"][name], ts[-1])  # rdsc differs from top_weights (n = 3 layers)


def test_rdsc_of_two_layers_is_the_top_layer():
    model = randomised("llama")
    layers = get_decoder_layers(model)
    merged = merged_parameters([layers[1], layers[2]], "rdsc")
    for n, p in layers[2].named_parameters():
        torch.testing.assert_close(merged[n], p.detach(), rtol=0, atol=1e-6)


def test_merge_layers_writes_bottom_and_removes_the_rest():
    model = randomised("qwen3", layers=6)
    layers = get_decoder_layers(model)
    expected = merged_parameters([layers[i] for i in (2, 3, 4)], "average")
    top_layer = layers[5]
    merge_layers(model, [[2, 3, 4]], "average")
    new = get_decoder_layers(model)
    assert len(new) == 4 and model.config.num_hidden_layers == 4
    for n, p in new[2].named_parameters():
        assert torch.equal(p, expected[n]), n
    assert new[3] is top_layer and new[3].self_attn.layer_idx == 3


@pytest.mark.parametrize("windows,match", [
    ([[1]], "fewer than 2"),
    ([[1, 3]], "consecutive"),
    ([[3, 2]], "consecutive"),
    ([[4, 5, 6]], "out of range"),
    ([[0, 1], [1, 2]], "overlaps"),
])
def test_bad_windows(windows, match):
    model = tiny_model("llama", num_layers=5)
    with pytest.raises(StreamlineError, match=match):
        merge_layers(model, windows)


def test_unknown_rule():
    model = tiny_model("llama", num_layers=5)
    with pytest.raises(StreamlineError, match="unknown merge rule 'sum'.*average"):
        merge_layers(model, [[1, 2]], "sum")


def test_dense_and_moe_layers_cannot_be_merged():
    model = tiny_model("qwen2_moe", num_layers=4)  # decoder_sparse_step=2: layers 1 and 3 are MoE
    with pytest.raises(StreamlineError, match="different parameters"):
        merge_layers(model, [[0, 1]])


def test_merge_plan_operation_uses_original_indices():
    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    merged = randomised("gemma3", layers=8)
    reference = randomised("gemma3", layers=8)
    merge_layers(merged, [[5, 6], [1, 2, 3]], "rdsc")
    plan = StreamlinePlan(base_model="tiny", num_layers_before=8, method="merge",
                          removed_layers=[2, 3, 6],
                          operations=[{"type": "merge", "layers": [5, 6], "rule": "rdsc"},
                                      {"type": "merge", "layers": [1, 2, 3], "rule": "rdsc"}])
    plan = StreamlinePlan.from_json(plan.to_json())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        replayed = apply_plan(reference, plan)
    assert plan.num_layers_after == 5 == replayed.config.num_hidden_layers
    sd_a, sd_b = merged.state_dict(), replayed.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert merged.config.layer_types == replayed.config.layer_types
    with torch.no_grad():
        assert torch.equal(merged(input_ids=ids).logits, replayed(input_ids=ids).logits)


def test_merge_plan_refuses_a_removed_layer():
    plan = StreamlinePlan(base_model="tiny", num_layers_before=5, method="merge",
                          operations=[{"type": "merge", "layers": [1, 2], "rule": "drop"},
                                      {"type": "merge", "layers": [2, 3], "rule": "drop"}])
    with pytest.raises(StreamlineError, match="already removed"):
        apply_plan(tiny_model("llama", num_layers=5), plan)
