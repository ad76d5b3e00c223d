"""Large-model loading: ``--sequential`` (decoder layers read from their shards at each forward), ``--max-memory``,
``--offload-folder``, ``--revision``/``--token``/``--attn-implementation``; sequential and whole-model passes agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tiny_models import tiny_model

ARCHS = ["llama", "qwen2", "gemma2", "gpt2", "gpt_neox", "mixtral"]


def _batches(vocab: int, seed: int = 0, n: int = 3, b: int = 2, t: int = 12):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (b, t), generator=g)
        mask = torch.ones_like(ids)
        mask[1, :3] = 0  # left padding on one row: the masks must be carried exactly too
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _sequential(folder: Path, tmp_path: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_streamline.offload import meta_model, sequential_device_map

    config = AutoConfig.from_pretrained(folder)
    dm = sequential_device_map(meta_model(config), "cpu")
    on_disk = sorted(k for k, v in dm.items() if v == "disk")
    head = [] if config.tie_word_embeddings else ["lm_head" if "lm_head" in dm else "embed_out"]
    assert len(on_disk) == config.num_hidden_layers + len(head) and set(head) <= set(on_disk), dm
    model = AutoModelForCausalLM.from_pretrained(folder, device_map=dm, offload_folder=str(tmp_path / "off"),
                                                 dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture(params=ARCHS)
def pair(request, tmp_path):
    arch = request.param
    dense = tiny_model(arch, num_layers=4)
    folder = tmp_path / arch
    dense.save_pretrained(folder)
    seq = _sequential(folder, tmp_path)
    from hf_streamline.offload import is_offloaded

    assert is_offloaded(seq) and not is_offloaded(dense)
    return arch, dense, seq


def test_sequential_passes_equal_whole_model(pair):
    """Block similarity (every block size), linear-fit statistics and CKA: the same numbers to 1e-6, float32."""
    from hf_streamline.capture import collect_block_similarity
    from hf_streamline.merging.cka import layer_similarity
    from hf_streamline.replacement.linear import collect_linear_fit

    arch, dense, seq = pair
    batches = _batches(dense.config.vocab_size)
    a = collect_block_similarity(dense, batches, progress=False)
    b = collect_block_similarity(seq, batches, progress=False)
    for name in ("cos_sum", "ang_sum", "last_cos_sum", "last_ang_sum"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-6, rtol=1e-6, msg=f"{arch} {name}")
    assert a.tokens == b.tokens and a.samples == b.samples
    if arch not in ("gpt_neox",):  # parallel residual: no MLP-output fold (refused for both)
        fa = collect_linear_fit(dense, batches, 2, [1, 2], progress=False)
        fb = collect_linear_fit(seq, batches, 2, [1, 2], progress=False)
        for s in (1, 2):
            torch.testing.assert_close(fb.xtx[s], fa.xtx[s], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(fb.xty[s], fa.xty[s], atol=1e-6, rtol=1e-6)
    ca = layer_similarity(dense, batches, progress=False).tensor()
    cb = layer_similarity(seq, batches, progress=False).tensor()
    torch.testing.assert_close(cb, ca, atol=1e-6, rtol=1e-6)


def test_sequential_prune_and_fold_write_the_same_model(tmp_path):
    """Removal and a merge (weights read and changed) on an offloaded model: onloaded where touched, saved shard by
    shard, and the saved checkpoint equals the whole-model result."""
    from transformers import AutoModelForCausalLM

    from hf_streamline.architecture import keep_only_layers
    from hf_streamline.merging.operation import merge_layers
    from hf_streamline.offload import save_model

    dense = tiny_model("llama", num_layers=6)
    folder = tmp_path / "base"
    dense.save_pretrained(folder)
    seq = _sequential(folder, tmp_path)
    for m in (dense, seq):
        merge_layers(m, [[1, 2]], "average")
        keep_only_layers(m, [0, 1, 3, 4])
    save_model(seq, tmp_path / "out")
    assert "hf_device_map" not in vars(seq) or "disk" in seq.hf_device_map.values()
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    sd_a, sd_b = dense.state_dict(), back.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        torch.testing.assert_close(sd_b[k], sd_a[k], atol=0, rtol=0, msg=k)


def test_score_cli_sequential_equals_whole(stories_dir, data_dir, tmp_path):
    """`hf-streamline score --sequential` on stories260K: same scores as the whole-model run, and the offload
    folder it made is gone afterwards."""
    from hf_streamline.cli import main

    common = ["score", "--model", str(stories_dir), "--calibration", str(data_dir / "text" / "stories260k_samples.txt"),
              "--samples", "4", "--seq-len", "64", "--metric", "block_influence,angular,magnitude,perplexity"]
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("hf_streamline_offload_*"))
    assert main(common + ["--output", str(tmp_path / "whole.json"), "--no-sequential"]) == 0
    assert main(common + ["--output", str(tmp_path / "seq.json"), "--sequential"]) == 0
    a = json.loads((tmp_path / "whole.json").read_text())["scores"]
    b = json.loads((tmp_path / "seq.json").read_text())["scores"]
    for metric in a:
        assert b[metric]["per_layer"] == pytest.approx(a[metric]["per_layer"], abs=1e-6)
    import gc

    gc.collect()
    after = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("hf_streamline_offload_*"))
    assert after <= before


def test_max_memory_below_the_model_runs_in_bounded_rss(tmp_path):
    """A model of ~200 MB scored with --max-memory 40MB: accelerate puts the layers on disk (the shards), the pass
    succeeds, and the process's peak RSS grows by less than half the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", vocab_size=256, hidden_size=512, intermediate_size=4096, num_hidden_layers=8,
                               num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    folder = tmp_path / "big"
    model.save_pretrained(folder, max_shard_size="60MB")
    size = sum(p.numel() for p in model.parameters()) * 4
    del model
    script = textwrap.dedent(f"""
        import json, torch
        from transformers import AutoModelForCausalLM
        from hf_streamline.capture import collect_block_similarity
        from hf_streamline.offload import limit_heap_growth
        from hf_streamline.validation import parse_max_memory

        def hwm():
            return [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]

        limit_heap_growth()
        base = hwm()
        m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, dtype=torch.float32, device_map="auto",
                                                 max_memory=parse_max_memory("40MB"), offload_folder={str(tmp_path / 'off')!r})
        ids = torch.randint(0, 256, (2, 32))
        st = collect_block_similarity(m, [{{"input_ids": ids, "attention_mask": torch.ones_like(ids)}}], progress=False)
        print(json.dumps({{"grew": hwm() - base, "disk": sum(v == "disk" for v in m.hf_device_map.values()),
                          "finite": bool(torch.isfinite(st.cos_sum).all())}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["disk"] >= 4 and rec["finite"]
    assert rec["grew"] < 0.5 * size, (rec, size)


def test_loading_flags_reach_from_pretrained(stories_dir, monkeypatch):
    """--revision / --token / --attn-implementation go to transformers; --device-map as a JSON dict is accepted."""
    import transformers

    from hf_streamline.loading import load_model_and_tokenizer

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(spec, *a, **kw):
        seen.update(kw)
        return real(spec, *a, **{k: v for k, v in kw.items() if k not in ("revision", "token")})

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = load_model_and_tokenizer(str(stories_dir), attn_implementation="eager", device_map='{"": "cpu"}')
    assert seen["attn_implementation"] == "eager" and seen["device_map"] == {"": "cpu"}
    assert model.config._attn_implementation == "eager"


def test_bad_large_model_flags_say_what_to_do(stories_dir):
    from hf_streamline.errors import StreamlineError
    from hf_streamline.loading import load_model_and_tokenizer
    from hf_streamline.validation import parse_max_memory

    assert parse_max_memory('{"0": "20GiB", "cpu": "64GiB"}') == {0: "20GiB", "cpu": "64GiB"}
    assert parse_max_memory("8GiB") == {"cpu": "8GiB"}
    with pytest.raises(StreamlineError, match="^max_memory: 'lots' for 'cpu' is not a memory size"):
        parse_max_memory('{"cpu": "lots"}')
    with pytest.raises(StreamlineError, match="'gpu0' is not a device"):
        parse_max_memory('{"gpu0": "1GiB"}')
    with pytest.raises(StreamlineError, match="^sequential: places the layers itself; drop device_map / max_memory"):
        load_model_and_tokenizer(str(stories_dir), sequential=True, max_memory="1GiB")
    with pytest.raises(StreamlineError, match="^offload_folder=.* is used with sequential, max_memory or device_map"):
        load_model_and_tokenizer(str(stories_dir), offload_folder="/tmp/x")


def test_heal_refuses_sequential_and_token_never_recorded(stories_dir, tmp_path, capsys):
    from hf_streamline.cli import main
    from hf_streamline.utils import without_secrets

    assert without_secrets(["prune", "--token", "hf_SECRET", "--model", "m", "--token=hf_X"]) == ["prune", "--model", "m"]
    rc = main(["heal", "--model", str(stories_dir), "--sequential", "--data", "bundled:text/stories260k_samples.txt",
               "--output", str(tmp_path / "h")])
    assert rc != 0
    err = capsys.readouterr().err
    assert "--sequential: this command trains the model" in err
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("command", [
    ["prune", "--remove", "2", "--selection", "search"],
    ["replace", "--replacement", "linear", "--block-size", "1"],
    ["replace", "--replacement", "mlp", "--block-size", "2", "--max-steps", "3", "--train-data", "TRAIN"],
    ["replace", "--replacement", "decoder_layer", "--objective", "lm", "--block-size", "2", "--max-steps", "3",
     "--train-data", "TRAIN"],
    ["replace", "--replacement", "decoder_layer", "--objective", "lm", "--kl-weight", "1", "--kd-top-k", "8",
     "--block-size", "2", "--max-steps", "3", "--train-data", "TRAIN"],
    ["merge", "--remove", "1"],
], ids=["prune-search-kl", "replace-linear", "replace-mlp-mse", "replace-layer-lm", "replace-layer-lm-kd-cached",
        "merge"])
def test_commands_with_sequential_write_the_same_weights(command, stories_dir, data_dir, tmp_path):
    """Every command that writes a model gives bit-identical weights with --sequential (stories260K)."""
    from safetensors.torch import load_file

    from hf_streamline.cli import main

    text = str(data_dir / "text" / "stories260k_samples.txt")
    command = [text if c == "TRAIN" else c for c in command]
    common = ["--model", str(stories_dir), "--calibration", text, "--samples", "8", "--seq-len", "64"]
    for mode in ("no-sequential", "sequential"):
        assert main(command + common + ["--output", str(tmp_path / mode), f"--{mode}"]) == 0
    a = load_file(tmp_path / "no-sequential" / "model.safetensors")
    b = load_file(tmp_path / "sequential" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_gguf_is_dequantised_to_the_requested_dtype(smollm2_dir):
    """The bundled GGUF loads straight into bfloat16 (one copy of the weights, half of float32's): the same values
    as the converted float32 folder cast to bfloat16, embeddings still tied."""
    from safetensors.torch import load_file

    from hf_streamline.loading import bundled_gguf_path, load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(bundled_gguf_path()), dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ref = load_file(smollm2_dir / "model.safetensors")
    sd = model.state_dict()
    for k in ("model.layers.3.mlp.down_proj.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(sd[k], ref[k].to(torch.bfloat16)), k


@pytest.mark.parametrize("flag,tol", [("--load-in-4bit", 0.02), ("--load-in-8bit", 0.002)])
def test_quantized_load_scores_within_tolerance(flag, tol, stories_dir, data_dir, tmp_path):
    """bitsandbytes on CPU (0.50 has CPU kernels for both): block influence of a 4-/8-bit-loaded stories260K within
    ``tol`` of the float one, the same least important layer; commands that write weights do not take the flag."""
    from hf_streamline.cli import main

    common = ["score", "--model", str(stories_dir), "--calibration", str(data_dir / "text" / "stories260k_samples.txt"),
              "--samples", "8", "--seq-len", "64", "--metric", "block_influence"]
    assert main(common + ["--output", str(tmp_path / "f.json")]) == 0
    assert main(common + [flag, "--output", str(tmp_path / "q.json")]) == 0
    a, b = (json.loads((tmp_path / n).read_text())["scores"]["block_influence"]["per_layer"] for n in ("f.json", "q.json"))
    assert max(abs(x - y) for x, y in zip(a, b)) < tol
    assert min(range(len(a)), key=a.__getitem__) == min(range(len(b)), key=b.__getitem__)
    with pytest.raises(SystemExit):
        main(["prune", "--model", str(stories_dir), flag, "--remove", "1", "--output", str(tmp_path / "p")])


def test_recipes_take_the_large_model_keys_and_refuse_a_token(stories_dir, data_dir, tmp_path):
    """Top-level `sequential` / `max_memory` reach the structural step (not heal, which trains); a section's
    `quantize` becomes the right flag; a Hub token in any section but `push` is refused (recipes are saved)."""
    from hf_streamline.errors import StreamlineError
    from hf_streamline.arguments.base import to_argv
    from hf_streamline.recipes.runner import stage_arguments
    from hf_streamline.recipes.schema import validate_recipe

    base = {"model": str(stories_dir), "method": "remove", "remove": {"remove": 1}, "output": str(tmp_path / "o"),
            "calibration": {"source": str(data_dir / "text" / "stories260k_samples.txt"), "samples": 4}}
    recipe = validate_recipe(dict(base, sequential=True, max_memory={"cpu": "2GiB"}, revision="main"))
    prune = stage_arguments("prune", recipe, recipe.data["remove"], str(stories_dir), output="x")
    assert prune.sequential is True and prune.max_memory == '{"cpu": "2GiB"}' and prune.samples == 4
    assert "--sequential" in to_argv(prune) and "--no-sequential" not in to_argv(prune)
    heal = stage_arguments("heal", recipe, {"data": ["x"]}, str(stories_dir), calibration=False, output="y")
    assert heal.sequential is None and heal.max_memory is None and heal.revision == "main"
    assert "--no-sequential" in to_argv(stage_arguments("prune", recipe, {"sequential": False}, None, loading=False,
                                                        output="x"))
    score = stage_arguments("score", recipe, {"quantize": "4bit"}, None, calibration=False)
    assert score.quantize == "4bit" and "--load-in-4bit" in to_argv(score)
    assert validate_recipe(dict(base, evaluate={"quantize": "8bit", "ppl": ["x"]})).data["evaluate"]["quantize"] == "8bit"
    with pytest.raises(StreamlineError, match="recipe key `evaluate.quantize`: '2bit' is not allowed"):
        validate_recipe(dict(base, evaluate={"quantize": "2bit"}))
    with pytest.raises(StreamlineError, match="recipe key `heal.token`: a recipe is saved beside the model"):
        validate_recipe(dict(base, heal={"token": "hf_SECRET", "data": "x"}))
    with pytest.raises(StreamlineError, match="recipe key `sequential` must be true or false"):
        validate_recipe(dict(base, sequential="yes"))


def test_abbreviated_token_flag_is_not_recorded(stories_dir, data_dir, tmp_path):
    """argparse accepts `--tok VALUE`; the recorded command (plan.extra.command of replace --replacement linear)
    drops it by its value."""
    from hf_streamline.cli import main
    from hf_streamline.utils import without_secrets

    assert without_secrets(["x", "--tok", "hf_S", "--toke=hf_S", "--model", "m"], "hf_S") == ["x", "--model", "m"]
    text = str(data_dir / "text" / "stories260k_samples.txt")
    assert main(["replace", "--replacement", "linear", "--block-size", "1", "--model", str(stories_dir),
                 "--calibration", text, "--samples", "4", "--seq-len", "32", "--tok", "hf_NOT_A_REAL_TOKEN",
                 "--output", str(tmp_path / "r")]) == 0
    written = "".join(p.read_text(errors="ignore") for p in (tmp_path / "r").rglob("*") if p.is_file()
                      and p.suffix in (".json", ".md", ".yaml"))
    assert "hf-streamline replace" in written and "hf_NOT_A_REAL_TOKEN" not in written


def test_merge_search_refuses_weight_rules_when_sequential(stories_dir, data_dir, tmp_path, capsys):
    from hf_streamline.cli import main

    rc = main(["merge", "--model", str(stories_dir), "--calibration", str(data_dir / "text" / "stories260k_samples.txt"),
               "--samples", "4", "--seq-len", "32", "--remove", "1", "--rule", "average", "--sequential",
               "--output", str(tmp_path / "m")])
    assert rc == 2 and "--rule average: the model is loaded layer by layer" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_plan_records_the_hub_commit_of_its_base():
    """A model loaded from the Hub carries the commit it resolved to (config._commit_hash); the plan's base record
    keeps it, and it does not enter the config hash (a local copy of the same commit still matches)."""
    from hf_streamline.plan import base_config_record

    model = tiny_model("llama")
    local = base_config_record(model)
    assert "revision" not in local
    model.config._commit_hash = "0123456789abcdef0123456789abcdef01234567"
    hub = base_config_record(model)
    assert hub["revision"] == "0123456789abcdef0123456789abcdef01234567"
    assert hub["config_sha256"] == local["config_sha256"]


def test_evaluate_does_not_time_a_model_read_from_disk(stories_dir, data_dir, tmp_path):
    """Speed of a --sequential (or quantized) load would time disk reads, not the model: the report says why it is
    missing instead of publishing it, and records how the model was loaded."""
    from hf_streamline.cli import main

    assert main(["evaluate", "--model", str(stories_dir), "--sequential", "--ppl",
                 str(data_dir / "text" / "stories260k_samples.txt"), "--ppl-tokens", "256", "--generate", "0",
                 "--output", str(tmp_path / "e")]) == 0
    rep = json.loads((tmp_path / "e" / "report.json").read_text())
    assert rep["speed"] == {} and "speed not measured" in rep["speed_note"]
    assert "disk" in rep["models"]["pruned"]["loading"]
    assert "speed not measured" in (tmp_path / "e" / "report.md").read_text()


def test_auto_sequential_sizes_a_cached_hub_model(tmp_path, monkeypatch):
    """`--sequential` turns itself on for a Hub id already in the cache (sized from its shard headers, no network)
    when it would not fit, and stays off for one that is not on this machine."""
    import huggingface_hub.constants as hub_constants

    from hf_streamline import offload

    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny" / "snapshots" / ("a" * 40)
    tiny_model("llama").save_pretrained(snap)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    size = offload.checkpoint_bytes(snap)
    monkeypatch.setattr(offload, "free_memory", lambda device: size)  # 80 % of it is free: does not fit
    on, why = offload.needs_sequential("someone/tiny", None, None)
    assert on and "--sequential" in why
    monkeypatch.setattr(offload, "free_memory", lambda device: 10 * size)
    assert offload.needs_sequential("someone/tiny", None, None) == (False, "")
    assert offload.needs_sequential("someone/not-cached", None, None) == (False, "")


def test_quantized_load_without_bitsandbytes_says_what_to_install(stories_dir, monkeypatch):
    import importlib.util

    from hf_streamline.errors import StreamlineError
    from hf_streamline.loading import load_model_and_tokenizer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(StreamlineError, match=r"^quantize='4bit': needs bitsandbytes: pip install "
                                              r"'hf-streamline\[qlora\]'"):
        load_model_and_tokenizer(str(stories_dir), quantize="4bit")


def test_4bit_layers_whose_widths_the_avx512_cpu_kernel_cannot_pack_keep_the_generic_path():
    """bitsandbytes 0.50 repacks 4-bit weights for its AVX512-BF16 CPU kernel and fails on widths it cannot pack
    (stories260K's 172-wide MLP): those layers are switched to the generic path, the others keep the fast one."""
    from types import SimpleNamespace

    from torch import nn

    from hf_streamline.loading import keep_4bit_cpu_kernels_safe

    def layer(n_in, n_out):
        m = nn.Module()
        m.in_features, m.out_features, m.support_avx512bf16_for_cpu = n_in, n_out, True
        m.weight = SimpleNamespace(quant_state=SimpleNamespace(blocksize=64))
        return m

    model = nn.ModuleDict({"ok": layer(128, 64), "narrow_out": layer(64, 172), "odd_in": layer(172, 64)})
    keep_4bit_cpu_kernels_safe(model)
    assert [model[k].support_avx512bf16_for_cpu for k in ("ok", "narrow_out", "odd_in")] == [True, False, False]
