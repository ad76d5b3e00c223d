"""Tiny random models of every architecture the library supports (built in-process, no download)."""

from __future__ import annotations

import torch

COMMON = dict(vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)


def _cfg(model_type: str, **kw):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **kw)


def tiny_config(arch: str, num_layers: int = 4):
    c = dict(COMMON, num_hidden_layers=num_layers)
    if arch in ("llama", "mistral", "qwen2", "phi3"):
        return _cfg(arch, **c)
    if arch == "qwen3":
        return _cfg("qwen3", head_dim=8, **c)
    if arch == "gemma":
        return _cfg("gemma", head_dim=8, **c)
    if arch == "gemma2":
        return _cfg("gemma2", head_dim=8, sliding_window=16, **c)
    if arch == "gemma3":
        return _cfg("gemma3_text", head_dim=8, sliding_window=16, sliding_window_pattern=2, **c)
    if arch == "mixtral":
        return _cfg("mixtral", num_local_experts=4, num_experts_per_tok=2, **c)
    if arch == "qwen2_moe":
        return _cfg("qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                    shared_expert_intermediate_size=32, decoder_sparse_step=2, **c)
    if arch == "gpt2":
        return _cfg("gpt2", vocab_size=128, bos_token_id=1, eos_token_id=2, n_embd=32, n_layer=num_layers, n_head=4, n_positions=128)
    if arch == "gpt_neox":
        return _cfg("gpt_neox", vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                    num_attention_heads=4, max_position_embeddings=128)
    if arch == "opt":
        return _cfg("opt", vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=32, ffn_dim=64, num_hidden_layers=num_layers,
                    num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32)
    raise KeyError(arch)


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox", "opt",
         "mixtral", "qwen2_moe"]


def tiny_model(arch: str, num_layers: int = 4, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, num_layers))
    model.eval()
    return model
