"""CKA (unbiased HSIC) properties, the streaming layer x layer map against a direct computation, plots, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from hf_streamline import StreamlineError
from hf_streamline.capture import LayerHooks
from hf_streamline.merging import SimilarityMap, cka, hsic_unbiased, hsic_unbiased_direct, layer_similarity
from hf_streamline.merging.cka import (LayerSimilarityCollector, gram_linear, gram_rbf, token_chunks, u_center)
from tiny_models import tiny_model


def features(n=40, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, 7, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, 7, generator=g, dtype=torch.float64)
    return x, y


def orthogonal(d, seed=1):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_with_itself_is_one(kernel):
    x, _ = features()
    assert cka(x, x, kernel) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_invariant_to_orthogonal_transforms_and_isotropic_scaling(kernel):
    x, y = features()
    base = cka(x, y, kernel)
    assert 0.05 < base < 0.99  # a non-trivial value, so invariance is a real check
    assert cka(x @ orthogonal(12), y, kernel) == pytest.approx(base, abs=1e-10)
    assert cka(x, 7.5 * y, kernel) == pytest.approx(base, abs=1e-10)
    assert cka(3.0 * x @ orthogonal(12, 5), 0.01 * y @ orthogonal(7, 6), kernel) == pytest.approx(base, abs=1e-10)
    assert cka(x + 4.0, y - 2.0, kernel) == pytest.approx(base, abs=1e-10)  # translation too
    # ... but not to an anisotropic scaling
    scale = torch.ones(12, dtype=torch.float64)
    scale[0] = 20.0
    assert abs(cka(x * scale, y, kernel) - base) > 1e-3


def test_u_centred_hsic_equals_the_song_et_al_formula():
    x, y = features(n=30)
    for k, l in ((gram_linear(x), gram_linear(y)), (gram_rbf(x), gram_rbf(y)), (x @ x.T, (y @ y.T) ** 2)):
        assert hsic_unbiased(k, l) == pytest.approx(hsic_unbiased_direct(k, l), rel=1e-9, abs=1e-12)


def test_unbiased_hsic_of_independent_data_is_near_zero_and_biased_is_not():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 50, generator=g, dtype=torch.float64)
    y = torch.randn(200, 50, generator=g, dtype=torch.float64)
    kx, ky = gram_linear(x), gram_linear(y)
    h = torch.eye(200, dtype=torch.float64) - 1.0 / 200
    biased = float(torch.trace(kx @ h @ ky @ h)) / 199 ** 2
    unbiased = hsic_unbiased(kx, ky)
    assert abs(unbiased) < 0.2 * biased  # the biased estimator is inflated for high-dimensional independent data


def test_u_center_zero_diagonal_and_translation_invariance():
    x, _ = features()
    u = u_center(gram_linear(x))
    assert torch.all(torch.diagonal(u) == 0)
    raw = x @ x.T  # uncentred features give the same U-centred Gram
    torch.testing.assert_close(u_center(raw), u, rtol=1e-9, atol=1e-9)


def test_token_chunks():
    chunks = token_chunks(10, 4, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(chunks).tolist()) == list(range(10))
    assert all(4 >= c.numel() >= 3 for c in chunks)
    assert token_chunks(3, 8) == []
    with pytest.raises(StreamlineError, match="at least 4"):
        token_chunks(10, 2)


def _batches(seed=0, n_batches=2, rows=2, T=12):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(3, 128, (rows, T), generator=g)
        mask = torch.ones_like(ids)
        mask[-1, T - 3:] = 0  # some padding, which must be excluded
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _stacked_outputs(model, batches):
    """Direct (non-streaming) reference: every layer output of every batch, padding dropped."""
    L = len(model.model.layers)
    per_batch = []
    for b in batches:
        outs = {}
        with LayerHooks(model, on_output=lambda i, h: outs.__setitem__(i, h.detach().clone())):
            with torch.no_grad():
                model(**b)
        m = b["attention_mask"].bool()
        per_batch.append([outs[i][m].double() for i in range(L)])
    return per_batch


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_streaming_linear_cka_matches_direct_computation(arch):
    model = tiny_model(arch, num_layers=5, seed=1)
    batches = _batches()
    sim = layer_similarity(model, batches, kind="cka_linear", max_gram_tokens=10_000, progress=False)
    per_batch = _stacked_outputs(model, batches)
    L = 5
    hsic = torch.zeros(L, L, dtype=torch.float64)
    for feats in per_batch:  # one minibatch per calibration batch: the Song et al. formula on stacked features
        grams = [f @ f.T for f in feats]
        for i in range(L):
            for j in range(L):
                hsic[i, j] += hsic_unbiased_direct(grams[i], grams[j])
    direct = hsic / torch.sqrt(torch.diagonal(hsic)[:, None] * torch.diagonal(hsic)[None, :])
    torch.testing.assert_close(sim.tensor(), direct, rtol=1e-8, atol=1e-9)
    assert torch.allclose(torch.diagonal(sim.tensor()), torch.ones(L, dtype=torch.float64))
    assert sim.tensor().min() < 0.999  # not trivially all ones
    # with one batch holding every token, it is exactly the full-data unbiased CKA
    one = layer_similarity(model, batches[:1], kind="cka_linear", max_gram_tokens=10_000, progress=False)
    assert one.matrix[0][3] == pytest.approx(cka(per_batch[0][0], per_batch[0][3]), abs=1e-10)


def test_chunked_cka_is_symmetric_with_unit_diagonal_and_close_to_unchunked():
    model = tiny_model("llama", num_layers=4, seed=2)
    batches = _batches(n_batches=3, rows=4, T=32)
    full = layer_similarity(model, batches, kind="cka_linear", max_gram_tokens=10_000, progress=False).tensor()
    chunked = layer_similarity(model, batches, kind="cka_linear", max_gram_tokens=32, progress=False)
    assert chunked.details["minibatches"] > 3
    t = chunked.tensor()
    torch.testing.assert_close(t, t.T)
    torch.testing.assert_close(torch.diagonal(t), torch.ones(4, dtype=torch.float64))
    assert (t - full).abs().max() < 0.15  # same quantity, noisier estimate


def test_cosine_and_rbf_maps():
    model = tiny_model("qwen3", num_layers=4, seed=0)
    batches = _batches()
    cos = layer_similarity(model, batches, kind="cosine", progress=False).tensor()
    per_batch = _stacked_outputs(model, batches)
    a = torch.cat([f[0] for f in per_batch])
    b = torch.cat([f[2] for f in per_batch])
    direct = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()
    assert float(cos[0, 2]) == pytest.approx(float(direct), abs=1e-5)
    rbf = layer_similarity(model, batches, kind="cka_rbf", sigma=0.8, progress=False)
    torch.testing.assert_close(torch.diagonal(rbf.tensor()), torch.ones(4, dtype=torch.float64))
    assert rbf.details["sigma"] == 0.8


def test_collector_keeps_no_features_between_batches():
    c = LayerSimilarityCollector(3, "cka_linear", max_gram_tokens=8)
    for _ in range(3):
        c.begin_batch(torch.ones(2, 6, dtype=torch.long))
        for i in range(3):
            c.on_output(i, torch.randn(2, 6, 5))
        c.end_batch()
        assert c._feats == [None, None, None]
    assert c.acc.shape == (3, 3) and c.minibatches == 6


def test_map_json_round_trip_and_heat_map(tmp_path):
    model = tiny_model("llama", num_layers=4, seed=0)
    sim = layer_similarity(model, _batches(), kind="cka_linear", progress=False)
    path = sim.save(tmp_path / "sim.json")
    loaded = SimilarityMap.from_dict(json.loads(open(path).read()))
    assert loaded.matrix == sim.matrix and loaded.kind == "cka_linear" and loaded.num_layers == 4
    png = sim.plot(tmp_path / "sim.png", title="tiny")
    data = open(png, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bad_input():
    model = tiny_model("llama", num_layers=3)
    with pytest.raises(StreamlineError, match="kind 'l2' is unknown"):
        layer_similarity(model, _batches(), kind="l2", progress=False)
    with pytest.raises(StreamlineError, match="at least 4"):
        layer_similarity(model, _batches(), max_gram_tokens=2, progress=False)
    with pytest.raises(StreamlineError, match="no calibration batches"):
        layer_similarity(model, [], progress=False)
    with pytest.raises(StreamlineError, match="same samples"):
        cka(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(StreamlineError, match="CKA kernel"):
        cka(torch.randn(5, 3), torch.randn(5, 3), kernel="poly")


def test_skip_first_tokens_leaves_out_each_sequences_first_real_tokens():
    model = tiny_model("llama", num_layers=4, seed=0)
    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: row 1 starts at position 3
    batch = [{"input_ids": ids, "attention_mask": mask}]
    sim = layer_similarity(model, batch, kind="cka_linear", max_gram_tokens=10_000, skip_first_tokens=2,
                           progress=False)
    outs = {}
    with LayerHooks(model, on_output=lambda i, h: outs.__setitem__(i, h.detach().clone())):
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    keep = mask.bool().clone()
    keep[0, :2] = False
    keep[1, 3:5] = False
    assert int(keep.sum()) == 8 + 5 == sim.details["tokens"]
    assert sim.matrix[0][2] == pytest.approx(cka(outs[0][keep].double(), outs[2][keep].double()), abs=1e-10)
    with pytest.raises(StreamlineError, match="^skip_first_tokens=-1: must be >= 0"):
        layer_similarity(model, batch, skip_first_tokens=-1, progress=False)
