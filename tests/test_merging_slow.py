"""SmolLM2-135M (slow): the literal rdsc collapses over a long window; the efficient search == full forwards.

(The deep-copy naive search is compared on tiny models in test_merging_search.py and on SmolLM2 in
benchmarks/merging.py: 28 deep copies of a 135M model are too slow for a test.)"""

from __future__ import annotations

import pytest
import torch

from hf_streamline import build_calibration, load_model_and_tokenizer
from hf_streamline.merging import WindowSearch, search_merge_windows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from hf_streamline.data import bundled_path

    model, tok = load_model_and_tokenizer(str(smollm2_dir), dtype="float32")
    calib = build_calibration(tok, str(bundled_path("train/wikipedia_30_articles.txt")), n_samples=1, seq_len=32)
    return model, calib


def test_literal_rdsc_collapses_over_a_long_window(smollm2):
    model, calib = smollm2
    sims = {}
    for rule in ("rdsc", "top_weights", "drop"):
        s = WindowSearch(model, list(calib.batches(1)), rule=rule, similarity="output_cosine", progress=False)
        s.prepare()
        sims[rule] = {n: s.trial([], 29 - n, 28)[0] for n in (2, 9)}
        s.restore()
    # two layers: rdsc is exactly the top layer (all parameters), a fine merge
    assert sims["rdsc"][2] > 0.8
    # nine layers (8 removed): the literal formula collapses the output similarity, the others keep some
    assert abs(sims["rdsc"][9]) < 0.2, sims
    assert sims["top_weights"][9] > 0.35 and sims["drop"][9] > 0.35, sims


def test_efficient_search_equals_full_forwards_on_smollm2(smollm2):
    model, calib = smollm2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eff = search_merge_windows(model, calib, threshold=0.88, progress=False)
    naive = search_merge_windows(model, calib, threshold=0.88, reuse_hidden=False, progress=False)
    assert eff.windows and [w["layers"] for w in eff.windows] == [w["layers"] for w in naive.windows]
    assert [t["similarity"] for t in eff.trials] == pytest.approx([t["similarity"] for t in naive.trials], abs=1e-5)
    assert eff.evaluations["total"] < 0.7 * naive.evaluations["total"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
