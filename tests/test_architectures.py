"""Layer removal keeps every common architecture a plain, reloadable checkpoint with the skipped-layer semantics."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from hf_streamline import StreamlineError, keep_only_layers, remove_layers, skip_layers
from hf_streamline.architecture import get_decoder_layers, pruned_config
from tiny_models import ARCHS, tiny_config, tiny_model

REMOVE = [1, 2]  # of 4 layers: keeps a sliding and a full layer on the Gemma2/3 patterns, a sparse and a dense MoE layer


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on the second row
    return ids, mask


def _greedy(model, ids, mask, use_cache: bool):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=use_cache,
                         pad_token_id=0)
    return out[:, ids.shape[1]:]


@pytest.fixture(scope="module")
def pruned_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pruned")
    results = {}
    for arch in ARCHS:
        original = tiny_model(arch, num_layers=4, seed=1)
        ids, mask = _inputs()
        with torch.no_grad():
            with skip_layers(original, REMOVE):
                skipped = original(input_ids=ids, attention_mask=mask).logits
            pruned = copy.deepcopy(original)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                remove_layers(pruned, REMOVE)
            logits = pruned(input_ids=ids, attention_mask=mask).logits
        folder = root / arch
        pruned.save_pretrained(folder)
        results[arch] = {"folder": folder, "original": original, "pruned": pruned, "skipped": skipped, "logits": logits}
    return results


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_equals_original_with_layers_skipped(pruned_folders, arch):
    r = pruned_folders[arch]
    assert len(get_decoder_layers(r["pruned"])) == 2
    assert r["pruned"].config.num_hidden_layers == 2
    assert (r["logits"] - r["skipped"]).abs().max().item() <= 1e-5
    # the original model object is untouched (its config is not shared with the pruned one)
    assert r["original"].config.num_hidden_layers == 4
    assert len(get_decoder_layers(r["original"])) == 4


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_with_cache_equals_without(pruned_folders, arch):
    model = pruned_folders[arch]["pruned"]
    ids, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(_greedy(model, ids, mask, True), _greedy(model, ids, mask, False))


def test_fresh_process_loads_every_architecture(pruned_folders, tmp_path):
    """A fresh interpreter with plain transformers (no hf_streamline import) reloads each folder: same logits, and
    generation with the KV cache equals generation without."""
    ids, mask = _inputs()
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    folders = {a: str(r["folder"]) for a, r in pruned_folders.items()}
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM
        assert "hf_streamline" not in sys.modules
        folders = json.loads({json.dumps(json.dumps(folders))})
        inp = torch.load({str(tmp_path / 'inputs.pt')!r})
        out = {{}}
        for arch, folder in folders.items():
            m = AutoModelForCausalLM.from_pretrained(folder).eval()
            with torch.no_grad():
                logits = m(input_ids=inp["ids"], attention_mask=inp["mask"]).logits
                gen = [m.generate(input_ids=inp["ids"], attention_mask=inp["mask"], max_new_tokens=6, do_sample=False,
                                  use_cache=c, pad_token_id=0)[:, inp["ids"].shape[1]:] for c in (True, False)]
            out[arch] = {{"logits": logits, "cached": gen[0], "uncached": gen[1], "layers": m.config.num_hidden_layers}}
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    for arch, r in pruned_folders.items():
        got = out[arch]
        assert got["layers"] == 2, arch
        assert (got["logits"] - r["logits"]).abs().max().item() <= 1e-5, arch
        assert (got["logits"] - r["skipped"]).abs().max().item() <= 1e-5, arch
        assert torch.equal(got["cached"], got["uncached"]), arch


def test_per_layer_config_lists_are_sliced():
    cfg = tiny_config("gemma3", num_layers=6)
    before = list(cfg.layer_types)
    new = pruned_config(cfg, [0, 3, 5])
    assert new.layer_types == [before[0], before[3], before[5]]
    assert new.num_hidden_layers == 3
    assert cfg.num_hidden_layers == 6 and list(cfg.layer_types) == before  # deep copy: original untouched


def test_layer_idx_renumbered():
    model = tiny_model("llama", num_layers=4)
    remove_layers(model, [0, 2])
    assert [layer.self_attn.layer_idx for layer in get_decoder_layers(model)] == [0, 1]


def test_qwen_moe_sparse_step_is_made_explicit():
    model = tiny_model("qwen2_moe", num_layers=4)  # decoder_sparse_step=2: layers 1 and 3 are sparse
    kinds = [type(layer.mlp).__name__ for layer in get_decoder_layers(model)]
    with pytest.warns(UserWarning, match="decoder_sparse_step"):
        remove_layers(model, [0])  # kept: 1 (sparse), 2 (dense), 3 (sparse)
    assert model.config.decoder_sparse_step == 1
    assert model.config.mlp_only_layers == [1]
    assert [type(layer.mlp).__name__ for layer in get_decoder_layers(model)] == kinds[1:]


def test_max_window_layers_threshold_is_remapped():
    cfg = tiny_config("qwen2", num_layers=6)
    cfg.max_window_layers = 4
    new = pruned_config(cfg, [0, 2, 4, 5])  # kept layers below 4: 0 and 2
    assert new.max_window_layers == 2


def test_gpt2_inverse_layer_idx_scaling_is_refused():
    cfg = tiny_config("gpt2")
    cfg.scale_attn_by_inverse_layer_idx = True
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(StreamlineError, match="scale_attn_by_inverse_layer_idx"):
        remove_layers(model, [1])
    assert len(get_decoder_layers(model)) == 4  # refused before anything changed


@pytest.mark.parametrize("bad,match", [([], "no layers"), ([0, 1, 2, 3], "at least one must stay"),
                                       ([7], "out of range"), ([-1], "out of range")])
def test_bad_layer_indices(bad, match):
    model = tiny_model("llama")
    with pytest.raises(StreamlineError, match=match):
        remove_layers(model, bad)


def test_keep_only_layers_refuses_empty():
    with pytest.raises(StreamlineError, match="at least one"):
        keep_only_layers(tiny_model("llama"), [])
