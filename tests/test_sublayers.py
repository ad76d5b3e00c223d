"""Attention / MLP sub-block removal (issue 13 §1) and the KL search (§2).

On tiny random models of several architectures: the saved model equals the dense model with those sub-blocks
zeroed by hooks, reloads in a fresh process with and without hf_streamline, generates the same with and without the
KV cache, and its cache holds nothing for attention-free layers; ``--export zeroed`` is a stock checkpoint with the
same logits; the search finds the exhaustive optimum; parallel-residual models are refused in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import hf_streamline
from hf_streamline.architecture import find_attention, find_mlp_module, get_decoder_layers
from hf_streamline.cli import main
from hf_streamline.errors import StreamlineError
from hf_streamline.plan import PLAN_FILENAME, StreamlinePlan
from hf_streamline.sublayers import Unit, candidate_units, kv_cache_bytes_per_token, remove_units, skip_units
from hf_streamline.unit_search import SearchConfig, UnitSearch, exhaustive_best, search_units
from tiny_models import tiny_model

SRC = str(Path(hf_streamline.__file__).resolve().parents[1])
# attention at slot 0 (the cache's seq length is read there), MLP elsewhere; MoE MLPs; post-norm Gemma 2/3; GPT-2
CASES = {"llama": [Unit(0, "attention"), Unit(2, "attention"), Unit(1, "mlp")],
         "qwen2": [Unit(1, "attention"), Unit(3, "mlp")],
         "gemma2": [Unit(0, "attention"), Unit(3, "attention"), Unit(2, "mlp")],
         "gemma3": [Unit(1, "attention"), Unit(0, "mlp"), Unit(3, "layer")],
         "gpt2": [Unit(0, "attention"), Unit(2, "mlp")],
         "mixtral": [Unit(2, "attention"), Unit(1, "mlp")],
         "qwen2_moe": [Unit(0, "attention"), Unit(1, "mlp")]}


def _inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    return ids, mask


def _hooked_logits(model, units, ids, mask):
    """Reference: the dense model with the units' outputs zeroed by forward hooks (an independent implementation)."""
    layers = get_decoder_layers(model)
    handles = []
    for u in units:
        if u.kind == "layer":
            handles.append(layers[u.layer].register_forward_hook(
                lambda m, a, kw, out: (kw.get("hidden_states", a[0] if a else None),) + tuple(out[1:])
                if isinstance(out, tuple) else kw.get("hidden_states", a[0] if a else None), with_kwargs=True))
            continue
        mod = find_attention(layers[u.layer])[0] if u.kind == "attention" else find_mlp_module(layers[u.layer])[0]
        handles.append(mod.register_forward_hook(
            lambda m, a, out: (torch.zeros_like(out[0]),) + tuple(out[1:]) if isinstance(out, tuple)
            else torch.zeros_like(out)))
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()


def _gen(model, ids, mask, use_cache):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=use_cache,
                          pad_token_id=0)[:, ids.shape[1]:]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("sublayers")
    ids, mask = _inputs()
    out = {}
    for arch, units in CASES.items():
        dense = tiny_model(arch, num_layers=4, seed=3)
        ref = _hooked_logits(dense, units, ids, mask)
        with torch.no_grad(), skip_units(dense, units):
            skipped = dense(input_ids=ids, attention_mask=mask).logits
        model = remove_units(dense, units)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            gen = {c: _gen(model, ids, mask, c) for c in (True, False)}
        folder = root / arch
        model.save_pretrained(folder)
        out[arch] = {"folder": folder, "model": model, "ref": ref, "skipped": skipped, "logits": logits, "gen": gen,
                     "units": units}
    return out


@pytest.mark.parametrize("arch", list(CASES))
def test_removed_sub_blocks_equal_hooked_dense_model(saved, arch):
    r = saved[arch]
    torch.testing.assert_close(r["skipped"], r["ref"], atol=1e-5, rtol=0)
    torch.testing.assert_close(r["logits"], r["ref"], atol=1e-5, rtol=0)
    assert type(r["model"]).__name__ == "StreamlineForCausalLM"
    removed = {(int(x["slot"]), x["unit"]) for x in r["model"].config.removed_sublayers}
    whole = sorted(u.layer for u in r["units"] if u.kind == "layer")
    assert r["model"].config.text_config.num_hidden_layers == 4 - len(whole)
    assert len(removed) == sum(1 for u in r["units"] if u.kind != "layer")
    # the removed sub-blocks hold no weights
    names = [n for n, _ in r["model"].named_parameters()]
    for slot, unit in removed:
        attr = r["model"].config.removed_sublayers[[(int(x["slot"]), x["unit"]) for x in
                                                    r["model"].config.removed_sublayers].index((slot, unit))]["module"]
        assert not [n for n in names if f"layers.{slot}.{attr}." in n or f"h.{slot}.{attr}." in n]


@pytest.mark.parametrize("arch", list(CASES))
def test_cached_generation_equals_uncached_and_cache_skips_attention_free_layers(saved, arch):
    r = saved[arch]
    assert torch.equal(r["gen"][True], r["gen"][False])
    model = r["model"]
    ids, mask = _inputs()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    cache = out.past_key_values
    free = set(model.config.attention_free_slots)
    assert free
    for i, layer in enumerate(cache.layers):
        held = [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if isinstance(t, torch.Tensor)]
        assert (not held) == (i in free), (arch, i)
    assert cache.get_seq_length() == ids.shape[1]


def test_kv_cache_is_smaller_per_token():
    ids, mask = _inputs()
    dense = tiny_model("llama", num_layers=4, seed=3)
    with torch.no_grad():
        full = kv_cache_bytes_per_token(dense(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values, 10)
        pruned = remove_units(dense, [Unit(0, "attention"), Unit(2, "attention")])
        half = kv_cache_bytes_per_token(pruned(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values, 10)
    assert half == pytest.approx(full / 2)


_SCRIPT = """
import json, sys, torch
{prelude}
from transformers import AutoModelForCausalLM
folders = json.loads({folders!r})
ids, mask = torch.load({inputs!r})
out = {{}}
for arch, folder in folders.items():
    m = AutoModelForCausalLM.from_pretrained(folder, {load_kwargs}).eval()
    with torch.no_grad():
        logits = m(input_ids=ids, attention_mask=mask).logits
        gen = [m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=c,
                          pad_token_id=0)[:, ids.shape[1]:] for c in (True, False)]
    out[arch] = {{"logits": logits, "gen": gen, "cls": type(m).__module__}}
torch.save(out, {result!r})
"""


@pytest.mark.parametrize("with_plugin", [True, False], ids=["with-hf_streamline", "remote-code"])
def test_reloads_in_a_fresh_process(saved, tmp_path, with_plugin):
    torch.save(_inputs(), tmp_path / "inputs.pt")
    prelude = "import hf_streamline" if with_plugin else textwrap.dedent(f"""
        import importlib.util
        sys.path[:] = [p for p in sys.path if p.rstrip('/') != {SRC!r}]
        assert importlib.util.find_spec('hf_streamline') is None, 'hf_streamline is importable'
    """)
    script = _SCRIPT.format(prelude=prelude, folders=json.dumps({a: str(r["folder"]) for a, r in saved.items()}),
                            inputs=str(tmp_path / "inputs.pt"), result=str(tmp_path / "out.pt"),
                            load_kwargs="" if with_plugin else "trust_remote_code=True")
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable] + ([] if with_plugin else ["-I"]) + ["-c", script]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(tmp_path / "out.pt")
    for arch, r in saved.items():
        # MoE experts may run another (equivalent) kernel in a fresh process: equal to float rounding
        torch.testing.assert_close(got[arch]["logits"], r["logits"], atol=1e-5, rtol=0, msg=arch)
        assert torch.equal(got[arch]["gen"][0], got[arch]["gen"][1]), arch
        assert torch.equal(got[arch]["gen"][0], r["gen"][True]), arch
        assert got[arch]["cls"].startswith("hf_streamline." if with_plugin else "transformers_modules."), arch


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "mixtral"])
def test_export_zeroed_is_a_stock_checkpoint_with_the_same_logits(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    ids, mask = _inputs()
    units = [Unit(0, "attention"), Unit(2, "mlp"), Unit(3, "layer")]
    dense = tiny_model(arch, num_layers=4, seed=3)
    ref = _hooked_logits(dense, units, ids, mask)
    model = remove_units(dense, units, export="zeroed")
    assert type(model).__module__.startswith("transformers.")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in config and config.get("model_type") != "streamline"
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, ref, atol=1e-5, rtol=0)


def test_parallel_residual_is_refused_in_one_line(stories_dir, data_dir, tmp_path, capsys):
    with pytest.raises(StreamlineError, match="in parallel from the same input.*--unit layer"):
        remove_units(tiny_model("gpt_neox", num_layers=4), [Unit(1, "attention")])
    # the same through the CLI: exit 2, one line, nothing written
    from transformers import AutoTokenizer

    neox = tiny_model("gpt_neox", num_layers=4)
    neox.save_pretrained(tmp_path / "neox")
    AutoTokenizer.from_pretrained(stories_dir).save_pretrained(tmp_path / "neox")
    capsys.readouterr()
    code = main(["prune", "--model", str(tmp_path / "neox"), "--calibration",
                 str(data_dir / "text" / "stories260k_samples.txt"), "--samples", "2", "--seq-len", "16",
                 "--unit", "attention", "--remove", "1", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "use_parallel_residual=True" in err[0], err
    assert not (tmp_path / "out").exists()


def _batches(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 128, (4, 16), generator=g),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(2)]


@pytest.mark.parametrize("arch,unit,count", [("llama", "layer", 1), ("llama", "layer", 2), ("llama", "sublayer", 3),
                                             ("gemma2", "attention", 2), ("gpt2", "sublayer", 2)])
def test_search_finds_the_exhaustive_optimum(arch, unit, count):
    model = tiny_model(arch, num_layers=4, seed=0)
    batches = _batches()
    with torch.no_grad():
        dense = model(**batches[0]).logits.clone()
    config = SearchConfig(top_k=None, progress=False, generations=30)
    units, record = search_units(model, batches, unit=unit, count=count, config=config)
    best, best_fit = exhaustive_best(model, batches, candidate_units(4, unit), count, config)
    assert units == best
    assert record["best_fitness"] == pytest.approx(best_fit, rel=1e-6)
    assert record["layer_evaluations"] > 0 and record["trials"] > 0
    with torch.no_grad():  # the model is left exactly as it was
        assert torch.equal(model(**batches[0]).logits, dense)


@pytest.mark.parametrize("arch,unit,count", [("llama", "layer", 2), ("qwen3", "sublayer", 2)])
def test_ppl_fitness_is_the_pruned_models_own_loss_and_its_search_finds_the_exhaustive_optimum(arch, unit, count):
    """``fitness="ppl"`` (BlockPruner's): the fitness of a removal is the pruned model's mean next-token NLL (what
    transformers' loss gives, padding excluded), there is no dense pass, and the search finds the exhaustive optimum."""
    model = tiny_model(arch, num_layers=4, seed=0)
    batches = _batches()
    batches[1]["attention_mask"][:, -3:] = 0  # padded tail: not scored
    config = SearchConfig(fitness="ppl", progress=False, generations=30)
    search = UnitSearch(model, batches, candidate_units(4, unit), config)
    try:
        search.prepare()
        assert search.teacher == []
        removed = frozenset({candidate_units(4, unit)[1]})
        fit = search.fitness(removed)
        search._install(removed)
        with torch.no_grad():
            total = n = 0
            for b in batches:
                labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
                k = int((labels[:, 1:] != -100).sum())
                total, n = total + float(model(**b, labels=labels).loss) * k, n + k
    finally:
        search.close()
    assert fit == pytest.approx(total / n, rel=1e-5)
    units, record = search_units(model, batches, unit=unit, count=count, config=config)
    best, best_fit = exhaustive_best(model, batches, candidate_units(4, unit), count, config)
    assert units == best and record["best_fitness"] == pytest.approx(best_fit, rel=1e-6)
    assert record["fitness"] == "ppl" and record["top_k"] is None
    kl_units, _ = search_units(model, batches, unit=unit, count=count, config=SearchConfig(top_k=None, progress=False))
    assert kl_units == exhaustive_best(model, batches, candidate_units(4, unit), count,
                                       SearchConfig(top_k=None, progress=False))[0]


def test_lazy_greedy_tries_fewer_units_and_equals_exact_greedy_when_it_may_try_them_all():
    model = tiny_model("llama", num_layers=6, seed=0)
    batches = _batches()
    exact_cfg = SearchConfig(top_k=None, progress=False, evolve=False)
    exact, rec = search_units(model, batches, unit="layer", count=3, config=exact_cfg)
    assert rec["trials"] == 6 + 5 + 4  # every remaining unit at every step
    everything = SearchConfig(top_k=None, progress=False, evolve=False, greedy_candidates=6)
    same, rec_all = search_units(model, batches, unit="layer", count=3, config=everything)
    assert same == exact and rec_all["greedy"]["steps"] == rec["greedy"]["steps"]
    lazy_cfg = SearchConfig(top_k=None, progress=False, evolve=False, greedy_candidates=2)
    lazy, rec_lazy = search_units(model, batches, unit="layer", count=3, config=lazy_cfg)
    assert rec_lazy["trials"] == 6 + 2 + 2 and len(lazy) == 3
    assert rec_lazy["config"]["greedy_candidates"] == 2
    # the first step is exact, so the first unit is the exact search's
    assert rec_lazy["greedy"]["steps"][0] == rec["greedy"]["steps"][0]
    with pytest.raises(StreamlineError, match="search.greedy_candidates=0: must be >= 1"):
        SearchConfig(greedy_candidates=0)


def test_greedy_with_count_one_is_exact_and_cached_trials_equal_full_passes():
    model = tiny_model("qwen3", num_layers=4, seed=0)
    batches = _batches()
    config = SearchConfig(top_k=None, progress=False, evolve=False)
    units, record = search_units(model, batches, unit="sublayer", count=1, config=config)
    assert units == exhaustive_best(model, batches, candidate_units(4, "sublayer"), 1, config)[0]
    assert record["evolution"]["generations"] == 0
    search = UnitSearch(model, batches, candidate_units(4, "sublayer"), config)
    try:
        search.prepare()
        parent = frozenset({Unit(1, "attention")})
        _, inputs = search.record(parent)
        child = parent | {Unit(2, "mlp")}
        from_cache = search.fitness(child, 2, inputs)
        evals = search.evaluations
        search.memo.clear()
        full = search.fitness(child)
        assert from_cache == pytest.approx(full, rel=1e-5, abs=1e-9)
        assert search.evaluations - evals > 0
    finally:
        search.close()


def test_top_k_kl_equals_full_kl_when_k_is_the_vocabulary():
    model = tiny_model("llama", num_layers=4, seed=0)
    batches = _batches()
    fits = []
    for k in (None, 128):
        s = UnitSearch(model, batches, candidate_units(4, "layer"), SearchConfig(top_k=k, progress=False))
        try:
            s.prepare()
            fits.append(s.fitness(frozenset({Unit(2)})))
        finally:
            s.close()
    assert fits[0] == pytest.approx(fits[1], rel=1e-5)


def test_cli_search_plan_and_apply_rebuild_the_same_model(stories_dir, data_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    common = ["--model", str(stories_dir), "--calibration", str(data_dir / "text" / "stories260k_samples.txt"),
              "--samples", "8", "--seq-len", "32"]
    out = tmp_path / "out"
    assert main(["prune", *common, "--unit", "sublayer", "--selection", "search", "--remove", "3",
                 "--generations", "3", "--offspring", "4", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "search: kl" in text and "layer evaluations" in text
    plan = json.loads((out / PLAN_FILENAME).read_text())
    rec = plan["extra"]["search"]
    assert rec["fitness"] == "kl" and rec["layer_evaluations"] > 0 and rec["evolution"]["seed"] == 0
    assert len(plan["extra"]["removed_units"]) == 3
    assert (out / "units.png").stat().st_size > 0  # the removed-unit map and the fitness curve
    again = tmp_path / "again"
    assert main(["apply", str(out), "--model", str(stories_dir), "--output", str(again)]) == 0
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "config.json").read_text()) == json.loads((again / "config.json").read_text())


def test_cli_search_takes_a_ratio_of_the_layers(stories_dir, data_dir, tmp_path, capsys):
    common = ["--model", str(stories_dir), "--calibration", str(data_dir / "text" / "stories260k_samples.txt"),
              "--samples", "4", "--seq-len", "32", "--selection", "search", "--generations", "0"]
    out = tmp_path / "out"
    assert main(["prune", *common, "--ratio", "0.4", "--output", str(out)]) == 0  # 40% of 5 layers = 2
    plan = json.loads((out / PLAN_FILENAME).read_text())
    assert len(plan["removed_layers"]) == 2 and plan["num_layers_after"] == 3
    capsys.readouterr()
    for ratio in ("1.5", "0"):
        assert main(["prune", *common, "--ratio", ratio, "--output", str(tmp_path / "bad")]) == 2
        assert f"--ratio {float(ratio)}" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
    assert main(["prune", *common, "--unit", "attention", "--ratio", "0.4", "--output", str(tmp_path / "bad")]) == 2
    assert "--ratio 0.4: counts whole layers" in capsys.readouterr().err


def test_cli_drop_cosine_and_explicit_units(stories_dir, data_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    common = ["--model", str(stories_dir), "--calibration", str(data_dir / "text" / "stories260k_samples.txt"),
              "--samples", "4", "--seq-len", "32"]
    assert main(["prune", *common, "--unit", "attention", "--remove", "2", "--output", str(tmp_path / "a")]) == 0
    plan = StreamlinePlan.load(tmp_path / "a")
    assert plan.metric == "drop_cosine" and len(plan.extra["removed_units"]) == 2
    assert (tmp_path / "a" / "scores.png").stat().st_size > 0
    cos = plan.scores["drop_cosine_attention"]["per_layer"]
    chosen = sorted(Unit.parse(u).layer for u in plan.extra["removed_units"])
    assert chosen == sorted(sorted(range(5), key=lambda i: -cos[i])[:2])  # the two most redundant
    assert main(["prune", *common, "--layers", "1.attention,3.mlp", "--export", "zeroed",
                 "--output", str(tmp_path / "z")]) == 0
    z = AutoModelForCausalLM.from_pretrained(tmp_path / "z")
    assert type(z).__name__ == "LlamaForCausalLM"
    assert float(z.model.layers[1].self_attn.o_proj.weight.abs().sum()) == 0.0
    assert float(z.model.layers[3].mlp.down_proj.weight.abs().sum()) == 0.0
    code = main(["prune", *common, "--unit", "attention", "--metric", "taylor", "--remove", "1",
                 "--output", str(tmp_path / "bad")])
    assert code == 2 and "sub-blocks are scored by drop_cosine" in capsys.readouterr().err


def test_drop_cosine_finds_a_sub_block_that_does_nothing(stories_model, data_dir):
    from hf_streamline import build_calibration
    from hf_streamline.scores.sublayer_cosine import sublayer_cosine

    model, tok = stories_model
    calib = build_calibration(tok, str(data_dir / "text" / "stories260k_samples.txt"), n_samples=4, seq_len=32)
    layers = get_decoder_layers(model)
    saved = layers[3].self_attn.o_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            layers[3].self_attn.o_proj.weight.zero_()
        cos = sublayer_cosine(model, calib, progress=False)
    finally:
        with torch.no_grad():
            layers[3].self_attn.o_proj.weight.copy_(saved)
    assert cos["attention"][3] == pytest.approx(1.0, abs=1e-5)
    assert max(range(5), key=lambda i: cos["attention"][i]) == 3
    assert all(-1.0 <= v <= 1.0 + 1e-6 for k in cos for v in cos[k])


def test_model_card_says_which_sub_blocks_went(stories_dir, data_dir, tmp_path):
    out = tmp_path / "m"
    assert main(["prune", "--model", str(stories_dir), "--layers", "1.attention,3.attention,2",
                 "--output", str(out)]) == 0
    assert main(["card", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "1 of its 5 decoder layers" in card and "2 attention sub-blocks were removed from kept layers" in card
    assert "Removed the attention sub-block of layer(s) 1, 3" in card and "hold no KV cache" in card
    assert "| 1 | **kept; no attention sub-block** |" in card and "| 2 | **removed** |" in card


def test_cli_search_then_linear_fold(stories_dir, data_dir, tmp_path, capsys):
    """`prune --selection search --search-samples N --fold linear`: the search sees N of the calibration sequences,
    each removed run gets a folded linear map, the plan keeps the search record and `apply` rebuilds the weights."""
    from safetensors.torch import load_file

    common = ["--model", str(stories_dir), "--calibration", str(data_dir / "text" / "stories260k_samples.txt"),
              "--samples", "16", "--seq-len", "32", "--selection", "search", "--remove", "2", "--generations", "2",
              "--offspring", "2", "--protect-first", "1"]
    plain, out = tmp_path / "plain", tmp_path / "fold"
    assert main(["prune", *common, "--search-samples", "4", "--output", str(plain)]) == 0
    assert main(["prune", *common, "--search-samples", "4", "--fold", "linear", "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert "fold: block" in said
    p0, p1 = (json.loads((d / PLAN_FILENAME).read_text()) for d in (plain, out))
    assert p0["extra"]["search"]["calibration_tokens"] == 4 * 32  # the search saw 4 of the 16 sequences
    assert p1["removed_layers"] == p0["removed_layers"] and p1["extra"]["search"]["units"] == p0["extra"]["search"]["units"]
    assert p1["selection"] == "search" and p1["extra"]["fold"]["kind"] == "linear"
    assert {op["type"] for op in p1["operations"]} == {"replace_linear"}
    assert [l for op in p1["operations"] for l in op["layers"]] == p1["removed_layers"]
    a0, a1 = load_file(plain / "model.safetensors"), load_file(out / "model.safetensors")
    assert a0.keys() == a1.keys()
    folded = [op for op in p1["operations"] if op["folded"]]
    assert any(not torch.equal(a0[k], a1[k]) for k in a0) == bool(folded)  # a kept map changed a down_proj
    again = tmp_path / "again"
    assert main(["apply", str(out), "--model", str(stories_dir), "--output", str(again)]) == 0
    b = load_file(again / "model.safetensors")
    assert all(torch.equal(a1[k], b[k]) for k in a1)
    capsys.readouterr()
    bad = ["prune", *common[:-2], "--output", str(tmp_path / "bad"), "--fold", "linear"]
    assert main([*bad, "--unit", "attention"]) == 2
    assert "--fold linear: replaces removed whole layers" in capsys.readouterr().err
    assert main([*bad, "--search-samples", "40"]) == 2
    assert "--search-samples 40: the calibration has only 16 sequences" in capsys.readouterr().err
    assert main(["prune", *common[:4], "--remove", "1", "--search-samples", "4", "--output", str(tmp_path / "bad")]) == 2
    assert "--search-samples 4: is used only when --selection is 'search'" in capsys.readouterr().err  # not silently ignored by scores
    assert not (tmp_path / "bad").exists()


def test_fold_refuses_a_run_at_layer_zero():
    from hf_streamline.replacement.linear import fold_removal
    from hf_streamline.utils import contiguous_runs

    assert contiguous_runs([26, 12, 13, 14]) == [[12, 13, 14], [26]]
    plan = StreamlinePlan(base_model="x", num_layers_before=4, removed_layers=[0, 1])
    with pytest.raises(StreamlineError, match=r"^selection_plan: .*start at layer 0.*protect_first=1"):
        fold_removal(torch.nn.Linear(2, 2), object(), plan)
