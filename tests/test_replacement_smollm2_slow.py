"""SmolLM2-135M (slow): a block of 9 layers replaced by one trained module beats plain removal of the same block."""

from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from hf_streamline import load_model_and_tokenizer

    return load_model_and_tokenizer(str(smollm2_dir), dtype="float32")


@pytest.fixture(scope="module")
def removed_ppl(smollm2):
    from hf_streamline.data import bundled_path
    from hf_streamline import evaluate_perplexity
    from hf_streamline.replacement import install_replacement

    model, tok = smollm2
    removed = install_replacement(copy.deepcopy(model), 11, 9, "none")
    text = str(bundled_path("text/wikitext2_test.raw"))
    return evaluate_perplexity(removed, tok, text, seq_len=256, max_tokens=2048, progress=False), text


@pytest.mark.parametrize("kind", ["mlp", "decoder_layer"])
def test_smollm2_nine_to_one_beats_removal(smollm2, removed_ppl, kind, tmp_path):
    from hf_streamline.data import bundled_path
    from hf_streamline import evaluate_perplexity
    from hf_streamline.replacement import streamline
    from hf_streamline.training import StreamlineTrainingArguments

    model, tok = smollm2
    ppl_removed, text = removed_ppl
    args = StreamlineTrainingArguments(output_dir=str(tmp_path / "t"), max_steps=40, per_device_train_batch_size=4,
                                       learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=5, use_cpu=True,
                                       disable_tqdm=True, logging_steps=1000)
    replaced, plan = streamline(copy.deepcopy(model), tok, block_size=9, block_start=11, replacement=kind,
                                train_data=str(bundled_path("train/wikipedia_30_articles.txt")), train_seq_len=128,
                                max_train_windows=32, training_args=args, activations="cache", progress=False)
    assert plan.num_layers_after == 22
    ppl = evaluate_perplexity(replaced, tok, text, seq_len=256, max_tokens=2048, progress=False)
    assert ppl < ppl_removed, (kind, ppl, ppl_removed)
