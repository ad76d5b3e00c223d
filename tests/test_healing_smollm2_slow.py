"""Healing on the real SmolLM2-135M (tied embeddings): untie keeps the input embedding bit-identical."""

from __future__ import annotations

import pytest
import torch

from test_healing import _one_thread  # noqa: F401 - the one-thread fixture

pytestmark = pytest.mark.slow


def test_smollm2_partial_untie_keeps_the_input_embedding(smollm2_dir, data_dir):
    from hf_streamline.healing import HealingDataConfig, embeddings_tied, heal, load_healing_data
    from hf_streamline.loading import load_model_and_tokenizer
    from hf_streamline.pruning import remove_layers

    model, tok = load_model_and_tokenizer(str(smollm2_dir))
    assert embeddings_tied(model)
    remove_layers(model, list(range(22, 30)))
    emb = model.get_input_embeddings().weight.detach().clone()
    layer0 = {n: p.detach().clone() for n, p in model.model.layers[0].named_parameters()}
    data = load_healing_data(tok, HealingDataConfig(source=str(data_dir / "train" / "wikipedia_30_articles.txt"),
                                                    seq_len=64, eval_size=0, max_examples=8))
    result = heal(model, tok, data, "partial:1", tied_policy="untie", max_steps=2, batch_size=2, learning_rate=1e-3,
                  progress=False)
    assert not embeddings_tied(result.model)
    assert torch.equal(result.model.get_input_embeddings().weight, emb)
    assert not torch.equal(result.model.lm_head.weight, emb)
    assert all(torch.equal(p, layer0[n]) for n, p in result.model.model.layers[0].named_parameters())
    assert result.record["trainable_parameters"] == emb.numel() + 576 + sum(
        p.numel() for p in result.model.model.layers[21].parameters())
