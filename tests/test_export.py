"""ONNX and optimum-quanto exports of a tiny pruned model: they load back and give logits close to torch's.

Tolerances: ONNX (fp32, ONNX Runtime) max |Δ logits| <= 1e-4 on every unpadded position, for shapes other than the
one it was traced with.  Quantized weights change the logits on purpose, so the bound is relative to the logit scale
(max |Δ| <= 5 % of max |logit| for int8, 25 % for int4; measured on tiny random models: ~0.7 % and ~10 %) plus argmax
agreement on most positions (>= 95 % int8, >= 80 % int4: a random tiny model's logits are nearly flat, so a few ties
flip).
"""

from __future__ import annotations

import json

import pytest
import torch

from hf_streamline.cli import main
from hf_streamline.errors import StreamlineError
from hf_streamline.export import (REPORT_FILENAME, ExportConfig, export_model, load_exported, load_source, ort_logits,
                                  ort_session)
from hf_streamline.plan import PLAN_FILENAME, StreamlinePlan
from hf_streamline.pruning import remove_layers, save_pruned
from tiny_models import tiny_model


def _ids(batch: int, seq: int, seed: int, pad: int = 0, vocab: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    return ids, mask


def _torch_logits(folder, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return load_source(folder)(input_ids=ids, attention_mask=mask).logits


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    model = tiny_model("llama", 4, seed=0)
    remove_layers(model, [1])
    plan = StreamlinePlan(base_model="tiny-llama", num_layers_before=4, method="remove", selection="user",
                          removed_layers=[1], operations=[{"type": "remove", "layers": [1]}])
    return save_pruned(model, None, plan, tmp_path_factory.mktemp("src") / "pruned")


@pytest.fixture(scope="module")
def onnx_dir(pruned_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "export"
    assert main(["export", str(pruned_dir), "--format", "onnx", "--output", str(out)]) == 0
    return out


def test_onnx_export_runs_in_onnxruntime_within_1e_4(onnx_dir, pruned_dir, capsys):
    for name in ("model.onnx", "model.onnx.data", "config.json", REPORT_FILENAME, PLAN_FILENAME):
        assert (onnx_dir / name).exists(), name
    assert json.loads((onnx_dir / PLAN_FILENAME).read_text()) == json.loads((pruned_dir / PLAN_FILENAME).read_text())
    assert json.loads((onnx_dir / "config.json").read_text())["num_hidden_layers"] == 3
    report = json.loads((onnx_dir / REPORT_FILENAME).read_text())
    assert report["backend"] == "transformers.exporters.OnnxExporter"
    assert report["check"]["within_tolerance"] and report["check"]["max_abs_diff"] <= 1e-4
    assert report["weights_bytes"] > 0 and report["plan"] == PLAN_FILENAME
    session = ort_session(onnx_dir)
    for batch, seq, pad in ((3, 20, 5), (1, 1, 0), (2, 48, 0)):  # dynamic batch and length, padding
        ids, mask = _ids(batch, seq, seed=seq, pad=pad)
        ref, out = _torch_logits(pruned_dir, ids, mask), ort_logits(session, ids, mask)
        assert out.shape == (batch, seq, 128)
        keep = mask.bool()
        assert (ref[keep] - out[keep]).abs().max() <= 1e-4, (batch, seq)


def test_onnx_export_loads_with_transformers_exported_model(onnx_dir, pruned_dir):
    from transformers.exporters import ExportedModel

    ids, mask = _ids(2, 12, seed=3)
    out = ExportedModel.from_pretrained(onnx_dir, device="cpu")(input_ids=ids, attention_mask=mask)
    assert (out.logits - _torch_logits(pruned_dir, ids, mask)).abs().max() <= 1e-4
    exporter, session = load_exported(onnx_dir)
    assert exporter.name == "onnx"
    assert (exporter.logits(session, ids, mask) - out.logits).abs().max() <= 1e-5


def test_onnx_kv_export_generates_like_torch_with_its_cache(pruned_dir, tmp_path, capsys):
    """`--format onnx-kv`: prefill + decode graphs; greedy generation in ONNX Runtime gives torch's tokens, and the
    logits through prefill then one-token decode steps match torch's full forward."""
    from hf_streamline.export import load_onnx_kv, onnx_generate

    out = tmp_path / "kv"
    assert main(["export", str(pruned_dir), "--format", "onnx-kv", "--output", str(out)]) == 0
    assert "onnx-kv" in capsys.readouterr().out
    for name in ("prefill.onnx", "decode.onnx", "decode.onnx.data", REPORT_FILENAME, PLAN_FILENAME):
        assert (out / name).exists(), name
    report = json.loads((out / REPORT_FILENAME).read_text())
    assert report["check"]["within_tolerance"] and report["check"]["max_abs_diff"] <= 1e-4
    exporter, exported = load_exported(out)
    assert exporter.name == "onnx-kv" and set(exported.components) == {"prefill", "decode"}
    # the report names the cache input the graphs were traced with (`cache` on transformers >= 5.24)
    cache_name = report["details"]["inputs"][-1]
    assert cache_name in ("cache", "past_key_values") and report["details"]["outputs"][-1] == cache_name
    assert all(cache_name in exported.components[g].metadata.kwargs for g in ("prefill", "decode"))
    model = load_source(pruned_dir)
    for seed, T, new in ((1, 9, 12), (2, 30, 5), (3, 1, 4)):  # prompt lengths other than the traced 16
        ids, _ = _ids(1, T, seed=seed)
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0)
        assert torch.equal(onnx_generate(exported, ids, new), ref), (seed, T)
    ids, mask = _ids(2, 20, seed=7, pad=6)  # padded rows are run on their real tokens only
    got, ref = exporter.logits(exported, ids, mask), _torch_logits(pruned_dir, ids, mask)
    keep = mask.bool()
    assert (got[keep] - ref[keep]).abs().max() <= 1e-4
    with pytest.raises(StreamlineError, match="one sequence at a time"):
        onnx_generate(exported, ids, 2)
    with pytest.raises(StreamlineError, match="holds no prefill.onnx"):
        load_onnx_kv(tmp_path)


def test_onnx_kv_runs_an_export_under_the_cache_name_it_was_traced_with():
    """transformers 5.24 traces the cache as `cache` (inputs `input.cache.layers.0.keys`), 5.23 as `past_key_values`:
    the step passes the cache under the traced name, and reads the grown cache from either output field."""
    from hf_streamline.export.onnx_kv_format import _cache_kwarg, _output_cache

    assert _cache_kwarg({"input_ids": {}, "position_ids": {}, "cache": {}}) == "cache"
    assert _cache_kwarg({"input_ids": {}, "position_ids": {}, "past_key_values": {}}) == "past_key_values"
    with pytest.raises(StreamlineError, match="takes no KV cache"):
        _cache_kwarg({"input_ids": {}})
    assert _output_cache({"logits": 1, "cache": "c"}) == "c"
    assert _output_cache({"logits": 1, "past_key_values": "p"}) == "p"
    with pytest.raises(StreamlineError, match="returned no cache"):
        _output_cache({"logits": 1})


@pytest.mark.parametrize("fmt, max_rel, min_agree", [("quanto-int8", 0.05, 0.95), ("quanto-int4", 0.25, 0.8)])
def test_quanto_export_reloads_close_to_torch(fmt, max_rel, min_agree, pruned_dir, stories_dir, tmp_path):
    from optimum.quanto import QModuleMixin

    out = tmp_path / fmt
    report = export_model(pruned_dir, out, fmt)
    assert (out / "quanto_qmap.json").exists() and (out / PLAN_FILENAME).exists()
    assert not (out / "README.md").exists()
    assert report["weights_bytes"] < report["source_weights_bytes"]
    assert report["check"]["tolerance"] is None and report["check"]["within_tolerance"] is None
    exporter, model = load_exported(out)
    quantized = [n for n, m in model.named_modules() if isinstance(m, QModuleMixin)]
    assert len(quantized) == 3 * 7  # q k v o gate up down in each of the 3 kept layers
    assert "lm_head" not in quantized  # the output projection stays full precision by default
    ids, mask = _ids(2, 24, seed=5, pad=4)
    ref, got = _torch_logits(pruned_dir, ids, mask), exporter.logits(model, ids, mask)
    keep = mask.bool()
    diff = (ref[keep] - got[keep]).abs().max()
    assert 0 < diff <= max_rel * ref[keep].abs().max(), diff  # really quantized, and close
    agree = (ref[keep].argmax(-1) == got[keep].argmax(-1)).float().mean()
    assert agree >= min_agree, agree
    generated = model.generate(ids[1:], attention_mask=mask[1:], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 27)
    # the loader every command uses recognises the export (plain AutoModelForCausalLM would load garbage silently)
    from transformers import AutoTokenizer

    from hf_streamline import load_model_and_tokenizer

    AutoTokenizer.from_pretrained(stories_dir).save_pretrained(out)  # the tiny source has no tokenizer of its own
    loaded, tok = load_model_and_tokenizer(str(out))
    assert [n for n, m in loaded.named_modules() if isinstance(m, QModuleMixin)] == quantized
    assert torch.equal(exporter.logits(loaded, ids, mask), got)


def test_quanto_int4_is_smaller_than_int8_and_cli_reports(pruned_dir, tmp_path, capsys):
    assert main(["export", str(pruned_dir), "--format", "quanto-int8", "--output", str(tmp_path / "q8")]) == 0
    assert "argmax agreement" in capsys.readouterr().out
    assert main(["export", str(pruned_dir), "--format", "quanto-int4", "--output", str(tmp_path / "q4")]) == 0
    r8 = json.loads((tmp_path / "q8" / REPORT_FILENAME).read_text())
    r4 = json.loads((tmp_path / "q4" / REPORT_FILENAME).read_text())
    assert r4["weights_bytes"] < r8["weights_bytes"] < r8["source_weights_bytes"]


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_failed_check_leaves_no_output(pruned_dir, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(StreamlineError, match="differs from torch"):
        export_model(pruned_dir, out, "quanto-int8", ExportConfig(tolerance=0.0))
    assert not out.exists() and not _leftovers(tmp_path, "strict")


def test_model_without_linear_layers_is_refused(tmp_path):
    model = tiny_model("gpt2", 2)
    model.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(StreamlineError, match="no torch.nn.Linear"):
        export_model(tmp_path / "gpt2", tmp_path / "out", "quanto-int8")
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path, "out")


def test_unknown_format_api_and_cli(pruned_dir, tmp_path, capsys):
    with pytest.raises(StreamlineError, match="unknown export format 'tflite'.*onnx"):
        export_model(pruned_dir, tmp_path / "out", "tflite")
    with pytest.raises(SystemExit) as exc:
        main(["export", str(pruned_dir), "--format", "tflite", "--output", str(tmp_path / "out")])
    assert exc.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing", "not_a_model", "existing_output", "export_as_source"])
def test_bad_input_is_one_clear_error_and_no_output(case, pruned_dir, onnx_dir, tmp_path, capsys):
    src, out = str(pruned_dir), tmp_path / "out"
    expect = {"missing": "does not exist", "not_a_model": "holds no config.json",
              "existing_output": "already exists", "export_as_source": "already an export"}[case]
    if case == "missing":
        src = str(tmp_path / "nope")
    elif case == "not_a_model":
        (tmp_path / "empty").mkdir()
        src = str(tmp_path / "empty")
    elif case == "existing_output":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        src = str(onnx_dir)
    assert main(["export", src, "--format", "quanto-int8", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    if case == "existing_output":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not _leftovers(tmp_path, "out")
