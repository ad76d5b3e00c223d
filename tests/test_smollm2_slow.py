"""SmolLM2-135M (the bundled default, 30 layers): block influence beats random and last-layer removal."""

from __future__ import annotations

import copy

import pytest

from hf_streamline import Target, build_calibration, evaluate_perplexity, load_model_and_tokenizer, prune
from hf_streamline.calibration import CalibrationConfig

pytestmark = pytest.mark.slow

EVAL_TOKENS = 8192  # a fixed slice of WikiText-2 test: enough to separate ~1e2 from ~1e3+ on CPU in seconds


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_model_and_tokenizer(str(smollm2_dir), dtype="float32")


def test_block_influence_beats_random_and_last_layers(smollm2, data_dir):
    model, tok = smollm2
    assert model.config.num_hidden_layers == 30
    calib = build_calibration(tok, str(data_dir / "train" / "wikipedia_30_articles.txt"),
                              CalibrationConfig(n_samples=32, seq_len=256, seed=0))
    wiki = str(data_dir / "text" / "wikitext2_test.raw")
    ppl = {"dense": evaluate_perplexity(model, tok, wiki, seq_len=256, max_tokens=EVAL_TOKENS, progress=False)}
    removed = {}
    for metric in ("block_influence", "random", "reverse_order"):
        m, plan = prune(copy.deepcopy(model), metric=metric, target=Target(layers=8), calibration=calib,
                        progress=False, seed=0)
        removed[metric] = plan.removed_layers
        ppl[metric] = evaluate_perplexity(m, tok, wiki, seq_len=256, max_tokens=EVAL_TOKENS, progress=False)
        del m
    print("removed:", removed, "perplexity:", ppl)
    assert removed["reverse_order"] == list(range(22, 30))
    assert ppl["dense"] < 60
    assert ppl["block_influence"] < 300
    assert ppl["block_influence"] * 5 < ppl["random"]
    assert ppl["block_influence"] * 5 < ppl["reverse_order"]
