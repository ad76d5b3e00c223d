"""StreamlineForCausalLM: mlp replacements round-trip through AutoModelForCausalLM in fresh processes -- with
hf_streamline imported, and with it unimportable (remote code, trust_remote_code=True)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import hf_streamline  # noqa: F401 - registers the Auto classes
from hf_streamline.architecture import get_decoder_layers
from hf_streamline.modeling import StreamlineConfig, StreamlineForCausalLM, StreamlineMLP
from hf_streamline.replacement import replace_block
from tiny_models import tiny_model

SRC = str(Path(hf_streamline.__file__).resolve().parents[1])
# (arch, block start, block size): slot 0 on three architectures, other slots on the rest
CASES = [("llama", 0, 2), ("qwen2", 1, 2), ("gemma3", 0, 2), ("gpt2", 2, 2), ("gpt_neox", 1, 2)]


def _inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    return ids, mask


def _perturb(model):
    """Make the replacement do something (the identity init equals plain removal)."""
    g = torch.Generator().manual_seed(1)
    for layer in get_decoder_layers(model):
        if isinstance(layer, StreamlineMLP):
            with torch.no_grad():
                layer.down_proj.weight.copy_(torch.randn(layer.down_proj.weight.shape, generator=g) * 0.2)


def _gen(model, ids, mask, use_cache, beams=1):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, num_beams=beams,
                          use_cache=use_cache, pad_token_id=0)[:, ids.shape[1]:]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamline_mlp")
    ids, mask = _inputs()
    out = {}
    for arch, start, n in CASES:
        model, op = replace_block(tiny_model(arch, num_layers=4, seed=3), start, n, "mlp")
        _perturb(model)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            gen = {c: _gen(model, ids, mask, c) for c in (True, False)}
            beam = {c: _gen(model, ids, mask, c, beams=3) for c in (True, False)}
        folder = root / f"{arch}-{start}"
        model.save_pretrained(folder)
        out[arch] = {"folder": folder, "model": model, "logits": logits, "gen": gen, "beam": beam, "start": start, "op": op}
    return out


@pytest.mark.parametrize("arch", [c[0] for c in CASES])
def test_in_memory_cached_equals_uncached(saved, arch):
    r = saved[arch]
    assert isinstance(r["model"], StreamlineForCausalLM)
    assert r["model"].config.text_config.num_hidden_layers == 3
    assert isinstance(get_decoder_layers(r["model"].model)[r["start"]], StreamlineMLP)
    assert torch.equal(r["gen"][True], r["gen"][False])
    assert torch.equal(r["beam"][True], r["beam"][False])


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_incremental_forward_takes_the_cache_under_either_name(saved, name):
    """transformers 5.24 renamed the KV cache kwarg `past_key_values` -> `cache` (generate() passes `cache`); the
    forward takes either, marks the replacement slot with a DummyLayer in the cache it was given, and hands that
    cache on to the base model under the base model's own name: prefill + one-token steps equal the full forward."""
    from transformers.cache_utils import DummyLayer, DynamicCache

    model = saved["llama"]["model"]  # replacement at slot 0: get_seq_length() must not read it
    ids = _inputs()[0][:1]
    cache = DynamicCache(config=model.config.text_config)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        steps = [model(input_ids=ids[:, :4], use_cache=True, **{name: cache}).logits]
        for t in range(4, ids.shape[1]):
            steps.append(model(input_ids=ids[:, t:t + 1], position_ids=torch.tensor([[t]]), use_cache=True,
                               **{name: cache}).logits)
    assert isinstance(cache.layers[0], DummyLayer) and cache.get_seq_length() == ids.shape[1]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=ids, cache=cache, past_key_values=DynamicCache(config=model.config.text_config))


def test_folder_has_remote_code_and_auto_map(saved):
    folder = saved["llama"]["folder"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "streamline"
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_streamline.StreamlineForCausalLM"
    assert cfg["replacements"][0]["slot"] == 0 and cfg["replacements"][0]["kind"] == "mlp"
    for name in ("configuration_streamline.py", "modeling_streamline.py"):
        text = (folder / name).read_text()
        imports = [ln.split()[1] for ln in text.splitlines() if ln.startswith(("import ", "from "))]
        # only torch, transformers, the standard library and single-dot relative imports of the sibling file
        assert all(m.split(".")[0] in ("__future__", "torch", "transformers", "inspect") or
                   (m.startswith(".") and not m.startswith("..")) for m in imports), imports


def test_tied_embeddings_stay_tied_after_reload(saved):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(saved["gemma3"]["folder"])  # gemma3 ties its embeddings
    assert model.config.text_config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


_SCRIPT = """
import json, sys, torch
{prelude}
from transformers import AutoModelForCausalLM
folders = json.loads({folders!r})
inp = torch.load({inputs!r})
out = {{}}
for arch, folder in folders.items():
    m = AutoModelForCausalLM.from_pretrained(folder, {load_kwargs}).eval()
    with torch.no_grad():
        logits = m(input_ids=inp["ids"], attention_mask=inp["mask"]).logits
        gen = [m.generate(input_ids=inp["ids"], attention_mask=inp["mask"], max_new_tokens=6, do_sample=False,
                          num_beams=b, use_cache=c, pad_token_id=0)[:, inp["ids"].shape[1]:]
               for b in (1, 3) for c in (True, False)]
    out[arch] = {{"logits": logits, "gen": gen, "cls": type(m).__module__ + "." + type(m).__name__}}
torch.save(out, {result!r})
"""


def _run_fresh(saved, tmp_path, prelude, load_kwargs, isolated):
    ids, mask = _inputs()
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    folders = json.dumps({a: str(r["folder"]) for a, r in saved.items()})
    script = _SCRIPT.format(prelude=prelude, folders=folders, inputs=str(tmp_path / "inputs.pt"),
                            load_kwargs=load_kwargs, result=str(tmp_path / "out.pt"))
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable] + (["-I"] if isolated else []) + ["-c", script]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(tmp_path / "out.pt")


def _check(saved, out):
    for arch, r in saved.items():
        got = out[arch]
        assert torch.equal(got["logits"], r["logits"]), arch
        g_c, g_u, b_c, b_u = got["gen"]
        assert torch.equal(g_c, g_u), arch
        assert torch.equal(b_c, b_u), arch
        assert torch.equal(g_c, r["gen"][True]), arch


def test_fresh_process_with_hf_streamline(saved, tmp_path):
    out = _run_fresh(saved, tmp_path, "import hf_streamline", "", isolated=False)
    _check(saved, out)
    assert all(v["cls"].startswith("hf_streamline.") for v in out.values())


def test_fresh_process_without_hf_streamline_uses_remote_code(saved, tmp_path):
    prelude = textwrap.dedent(f"""
        import importlib.util
        sys.path[:] = [p for p in sys.path if p.rstrip('/') != {SRC!r}]
        assert importlib.util.find_spec('hf_streamline') is None, 'hf_streamline is importable'
    """)
    out = _run_fresh(saved, tmp_path, prelude, "trust_remote_code=True", isolated=True)
    _check(saved, out)
    assert all(v["cls"].startswith("transformers_modules.") for v in out.values())


def test_bf16_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = replace_block(tiny_model("llama", num_layers=4, seed=2), 1, 2, "mlp")
    _perturb(model)
    model.save_pretrained(tmp_path / "fp32")
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", dtype=torch.bfloat16).eval()
    assert next(get_decoder_layers(half.model)[1].parameters()).dtype == torch.bfloat16
    ids, mask = _inputs()
    with torch.no_grad():
        ref = half(input_ids=ids, attention_mask=mask).logits
    assert ref.dtype == torch.bfloat16
    half.save_pretrained(tmp_path / "bf16")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16).eval()
    assert next(get_decoder_layers(again.model)[1].parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, ref)
        assert torch.equal(_gen(again, ids, mask, True), _gen(again, ids, mask, False))


def test_device_map_auto_loads(saved):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(saved["llama"]["folder"], device_map="auto").eval()
    ids, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, saved["llama"]["logits"])


def test_config_rejects_bad_records():
    from tiny_models import tiny_config

    with pytest.raises(ValueError, match="outside"):
        StreamlineConfig(text_config=tiny_config("llama", 3), replacements=[
            {"slot": 5, "kind": "mlp", "hidden_size": 32, "intermediate_size": 8}])
    with pytest.raises(ValueError, match="lacks"):
        StreamlineConfig(text_config=tiny_config("llama", 3), replacements=[{"slot": 0}])
