"""Every bad input is one line ``hf-streamline CMD: error: ...`` naming the input and what to do, exit code 2, no
traceback and nothing left behind; what needs no model is refused before any model loads (issue 18, section 3)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hf_streamline.cli import main
from hf_streamline.errors import StreamlineError

ROOT = Path(__file__).resolve().parents[1]


# ---- helpers ------------------------------------------------------------------------------------------------------

def _copy(stories_dir: Path, dest: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(stories_dir, dest)
    for name in drop:
        (dest / name).unlink()
    return dest


def _set_layers(folder: Path, n: int) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = n
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_error(code: int, err: str, command: str, pattern: str, tmp_path: Path, out: Path | None = None) -> str:
    """Exit 2, exactly one ``hf-streamline CMD: error:`` line (the last line of stderr) matching ``pattern``, no
    traceback, and no output folder or staging folder left behind."""
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    line = err.strip().splitlines()[-1]
    assert line == errors[0] and line.startswith(f"hf-streamline {command}: error: "), err
    assert re.search(pattern, line), line
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return line


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model's weights are loaded: the input must be refused before that."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture
def calib(data_dir) -> Path:
    return data_dir / "text" / "stories260k_samples.txt"


@pytest.fixture
def texts(tmp_path) -> dict[str, Path]:
    binary = tmp_path / "weights.txt"
    binary.write_bytes(bytes(range(256)) * 64)  # NUL bytes: a binary file given as text
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Once upon a time there was a caf\u00e9.\n".encode("latin-1") * 50)
    return {"binary": binary, "latin1": latin1}


@pytest.fixture
def plan_dir(stories_dir, tmp_path) -> Path:
    """A real plan: layer 1 of stories260K removed."""
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(stories_dir), "--layers", "1", "--output", str(out)]) == 0
    return out


# ---- broken model folders ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, pattern", [
    ("no_config", r"--model '.*no_config' has no config\.json, so it is not a saved model; give the folder "
                  r"save_pretrained wrote"),
    ("no_weights", r"has a config\.json but no weights \(model\.safetensors or pytorch_model\.bin\)"),
    ("truncated", r"model\.safetensors' is truncated or damaged \(it has 100,000 bytes, its header promises .*\); "
                  r"download or save the model again"),
    ("no_tokenizer", r"has no tokenizer \(no tokenizer\.json, tokenizer_config\.json or tokenizer\.model\); save it"),
])
def test_broken_model_folder_is_refused_before_loading(case, pattern, stories_dir, tmp_path, capsys, no_model_load):
    folder = tmp_path / case
    if case == "no_config":
        _copy(stories_dir, folder, drop=("config.json",))
    elif case == "no_weights":
        _copy(stories_dir, folder, drop=("model.safetensors",))
    elif case == "truncated":
        _copy(stories_dir, folder)
        data = (stories_dir / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:100_000])
    else:
        _copy(stories_dir, folder, drop=("tokenizer.json", "tokenizer_config.json"))
    out = tmp_path / "out"
    code, err = run_cli(["prune", "--model", folder, "--layers", "1", "--output", out], capsys)
    assert_one_error(code, err, "prune", pattern, tmp_path, out)


@pytest.mark.parametrize("layers, pattern", [
    (6, r"9 weight\(s\) the config needs are not in the checkpoint \(e\.g\. model\.layers\.5\..*\); config\.json says "
        r"num_hidden_layers=6, but the weights hold 5 layers"),
    (4, r"9 weight\(s\) of the checkpoint have no place in the config \(e\.g\. model\.layers\.4\..*\); config\.json "
        r"says num_hidden_layers=4, but the weights hold 5 layers"),
])
def test_config_layer_count_that_does_not_match_the_weights(layers, pattern, stories_dir, tmp_path, capsys):
    folder = _set_layers(_copy(stories_dir, tmp_path / f"layers{layers}"), layers)
    out = tmp_path / "out"
    code, err = run_cli(["prune", "--model", folder, "--layers", "1", "--output", out], capsys)
    line = assert_one_error(code, err, "prune", pattern, tmp_path, out)
    assert "fix config.json" in line and "LOAD REPORT" not in err  # transformers' table is held back


def test_weight_mismatch_through_the_python_api(stories_dir, tmp_path):
    from hf_streamline import load_model_and_tokenizer

    folder = _set_layers(_copy(stories_dir, tmp_path / "layers6"), 6)
    with pytest.raises(StreamlineError, match="its weights do not match its config.json"):
        load_model_and_tokenizer(str(folder))


def test_tied_embeddings_are_not_missing_weights(stories_dir, tmp_path):
    """A tied lm_head is legitimately absent from the checkpoint: such a model loads."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_streamline import load_model_and_tokenizer

    cfg = LlamaConfig(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=True)
    folder = tmp_path / "tied"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(stories_dir).save_pretrained(folder)
    model, _ = load_model_and_tokenizer(str(folder))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_fake_gguf(tmp_path, capsys, no_model_load):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"this is not a gguf file" * 100)
    out = tmp_path / "out"
    code, err = run_cli(["prune", "--model", fake, "--layers", "1", "--output", out], capsys)
    assert_one_error(code, err, "prune", r"--model '.*model\.gguf' is not a GGUF file \(it does not start with the GGUF "
                                         r"magic bytes\); give a real \.gguf file", tmp_path, out)


# ---- text files ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["binary", "latin1"])
@pytest.mark.parametrize("command", ["calibration", "heal", "eval-text", "ppl"])
def test_binary_or_non_utf8_text_is_refused_before_loading(command, kind, texts, stories_dir, calib, tmp_path, capsys,
                                                           no_model_load):
    bad = texts[kind]
    out = tmp_path / "out"
    s = str(stories_dir)
    argv, cmd, flag = {
        "calibration": (["prune", "--model", s, "--calibration", bad, "--remove", "1"], "prune", "--calibration"),
        "heal": (["heal", "--model", s, "--data", bad, "--max-steps", "1"], "heal", "--data"),
        "eval-text": (["prune", "--model", s, "--layers", "1", "--eval-text", bad], "prune", "--eval-text"),
        "ppl": (["evaluate", "--model", s, "--ppl", bad, "--no-speed"], "evaluate", "--ppl"),
    }[command]
    code, err = run_cli(argv + ["--output", out], capsys)
    what = (r"is a binary file \(it holds NUL bytes\), not text; give a UTF-8 text file" if kind == "binary" else
            r"is not UTF-8 text \(byte 0xe9 at offset \d+\); convert it to UTF-8")
    assert_one_error(code, err, cmd, rf"{flag} '.*{bad.name}' {what}", tmp_path, out)


def test_non_utf8_jsonl_calibration(stories_dir, tmp_path, capsys):
    bad = tmp_path / "docs.jsonl"
    bad.write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1") * 20)
    out = tmp_path / "out"
    code, err = run_cli(["prune", "--model", stories_dir, "--calibration", bad, "--remove", "1", "--output", out], capsys)
    assert_one_error(code, err, "prune", r"'.*docs\.jsonl' is not UTF-8 text", tmp_path, out)


def test_mistyped_eval_text_path_is_an_error_not_the_text(stories_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    typo = tmp_path / "wikitext2_tset.raw"
    code, err = run_cli(["prune", "--model", stories_dir, "--layers", "1", "--eval-text", typo, "--output", out], capsys)
    assert_one_error(code, err, "prune", r"--eval-text '.*wikitext2_tset\.raw': no such file; check the path \(it is "
                                         r"read as a file name, never as the text itself\)", tmp_path, out)


def test_python_api_tells_text_from_a_file_by_type(stories_model, calib, tmp_path):
    from hf_streamline import evaluate_perplexity

    model, tok = stories_model
    text = calib.read_text(encoding="utf-8")
    by_text = evaluate_perplexity(model, tok, text, seq_len=64, max_tokens=256, progress=False)
    by_path = evaluate_perplexity(model, tok, calib, seq_len=64, max_tokens=256, progress=False)
    assert by_text == pytest.approx(by_path)
    with pytest.raises(StreamlineError, match="no such file"):  # a Path is always a file
        evaluate_perplexity(model, tok, tmp_path / "missing.txt", progress=False)


# ---- counts, layer lists, specs, metric needs: before the model loads ----------------------------------------------

@pytest.mark.parametrize("argv, command, pattern", [
    (["prune", "--layers", "one,two"], "prune",
     r"--layers 'one,two': 'one' is not a layer index; give comma-separated whole numbers, e\.g\. --layers 3,4,7"),
    (["prune", "--layers", "1,9"], "prune", r"layer index 9 is out of range: the model has layers 0\.\.4"),
    (["prune", "--remove", "0", "--calibration", "CALIB"], "prune", r"--remove 0: remove at least one layer"),
    (["prune", "--remove", "9", "--calibration", "CALIB"], "prune",
     r"--remove 9: the model has 5 layers and at least one must stay"),
    (["prune", "--ratio", "0.95", "--calibration", "CALIB"], "prune",
     r"--ratio 0\.95: means removing 5 of 5 layers, but the model has 5 layers and at least one must stay"),
    (["merge", "--remove", "9", "--calibration", "CALIB"], "merge", r"cannot merge away 9 of 5 layers"),
    (["heal", "--remove", "9", "--data", "CALIB"], "heal", r"--remove 9: the model has 5 layers"),
    (["heal", "--remove", "1", "--data", "CALIB", "--last-k", "cut"], "heal",
     r"--last-k cut: needs a pruned folder's plan; with iterative pruning \(--remove\) give a number"),
    (["replace", "--block-size", "9", "--calibration", "CALIB"], "replace",
     r"--block-size 9: larger than the model, which has 5 decoder layers"),
    (["score", "--metric", "block_influence", "--block-size", "5", "--calibration", "CALIB"], "score",
     r"--block-size 5: the model has 5 layers; give a block size in 1\.\.4"),
    (["prune", "--remove", "1"], "prune", r"--metric block_influence: scores layers on data: pass --calibration"),
    (["prune", "--metric", "taylor", "--remove", "1"], "prune", r"--metric taylor: scores layers on data"),
    (["score", "--metric", "magnitude,taylor"], "score", r"--metric taylor: scores layers on data"),
    (["prune", "--remove", "1", "--calibration", "dataset:wikitext"], "prune",
     r"--calibration 'dataset:wikitext': expected dataset:NAME:SPLIT"),
    (["prune", "--remove", "1", "--calibration", "dataset::test"], "prune",
     r"--calibration 'dataset::test': the dataset NAME and SPLIT must not be empty"),
    (["prune", "--remove", "1", "--calibration", "no/such/file.txt"], "prune",
     r"--calibration 'no/such/file\.txt': no such file"),
    (["heal", "--data", "missing.jsonl"], "heal", r"--data 'missing\.jsonl': no such file"),
    (["replace", "--block-size", "2", "--block-start", "0", "--train-data", "missing.txt"], "replace",
     r"--train-data 'missing\.txt': no such file"),
    (["heal", "--data", "CALIB", "--method", "distill", "--teacher", "no/such/teacher"], "heal",
     r"--teacher 'no/such/teacher': no such folder"),
    (["evaluate", "--ppl", "CALIB", "--baseline", "no/such/dense"], "evaluate",
     r"--baseline 'no/such/dense': no such folder"),
])
def test_needs_no_model_so_refused_before_loading(argv, command, pattern, stories_dir, calib, tmp_path, capsys,
                                                  no_model_load):
    out = tmp_path / "out"
    argv = [str(calib) if a == "CALIB" else a for a in argv]
    tail = [] if command == "score" else ["--output", out]
    code, err = run_cli([argv[0], "--model", stories_dir, *argv[1:], *tail], capsys)
    assert_one_error(code, err, command, pattern, tmp_path, out)


@pytest.mark.parametrize("argv, command, flag, value", [
    (["prune", "--remove", "1", "--calibration", "CALIB", "--batch-size", "0"], "prune", "--batch-size", 0),
    (["prune", "--remove", "1", "--calibration", "CALIB", "--samples", "0"], "prune", "--samples", 0),
    (["prune", "--remove", "1", "--calibration", "CALIB", "--seq-len", "1"], "prune", "--seq-len", 1),
    (["prune", "--remove", "1", "--calibration", "CALIB", "--step", "0", "--iterative"], "prune", "--step", 0),
    (["heal", "--data", "CALIB", "--batch-size", "-1"], "heal", "--batch-size", -1),
    (["heal", "--data", "CALIB", "--grad-accum", "0"], "heal", "--grad-accum", 0),
    (["heal", "--data", "CALIB", "--epochs", "0"], "heal", "--epochs", "0.0"),
    (["evaluate", "--ppl", "CALIB", "--batch-size", "0"], "evaluate", "--batch-size", 0),
    (["evaluate", "--ppl", "CALIB", "--ppl-seq-len", "0"], "evaluate", "--ppl-seq-len", 0),
    (["replace", "--block-size", "0", "--calibration", "CALIB"], "replace", "--block-size", 0),
])
def test_non_positive_counts(argv, command, flag, value, stories_dir, calib, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    argv = [str(calib) if a == "CALIB" else a for a in argv]
    code, err = run_cli([argv[0], "--model", stories_dir, *argv[1:], "--output", out], capsys)
    what = "a number greater than 0" if flag == "--epochs" else "a whole number of at least"
    assert_one_error(code, err, command, rf"^hf-streamline {command}: error: {flag} {value}: give {what}", tmp_path, out)


# ---- devices --------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the case is a machine without it")
def test_device_cuda_without_cuda(stories_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    code, err = run_cli(["prune", "--model", stories_dir, "--layers", "1", "--device", "cuda", "--output", out], capsys)
    assert_one_error(code, err, "prune", r"--device 'cuda': CUDA is not available here \(.*\); use cpu", tmp_path,
                     out)


def test_unknown_device(stories_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    code, err = run_cli(["prune", "--model", stories_dir, "--layers", "1", "--device", "gpu", "--output", out], capsys)
    assert_one_error(code, err, "prune", r"--device 'gpu' is not a device; use cpu, cuda, cuda:N or mps", tmp_path, out)


def test_device_map_json_dict_is_accepted(stories_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["prune", "--model", stories_dir, "--layers", "1", "--device-map", '{"": "cpu"}',
                         "--output", out], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("value, pattern", [
    ("{not json", r"--device-map '\{not json' is not valid JSON \(.*\); give e\.g\. '\{\"\": \"cpu\"\}'"),
    ("everywhere", r"--device-map 'everywhere': give auto, balanced, balanced_low_0, sequential, a device such as cpu"),
    ('{"": "gpu"}', r"--device-map entry '': 'gpu' is not a device"),
])
def test_bad_device_map(value, pattern, stories_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    code, err = run_cli(["prune", "--model", stories_dir, "--layers", "1", "--device-map", value, "--output", out], capsys)
    assert_one_error(code, err, "prune", pattern, tmp_path, out)


@pytest.mark.parametrize("value", [5, ["cpu"], 1.5])
def test_non_string_device_map_in_the_python_api(value, stories_dir, no_model_load):
    from hf_streamline import load_model_and_tokenizer

    # a Python caller reads the argument's name (the command line, tested above, its flag)
    with pytest.raises(StreamlineError, match=r"^device_map .*: expected a string .* or a dict \{module name: device\}"):
        load_model_and_tokenizer(str(stories_dir), device_map=value)


# ---- plans ------------------------------------------------------------------------------------------------------------

def _edited_plan(plan_dir: Path, tmp_path: Path, edit) -> Path:
    plan = json.loads((plan_dir / "streamline_plan.json").read_text())
    path = tmp_path / "edited_plan.json"
    path.write_text(edit(plan) if callable(edit) else edit)
    return path


@pytest.mark.parametrize("case, pattern", [
    ("not_json", r"plan '.*edited_plan\.json': not valid JSON \(Expecting property name enclosed in double quotes at "
                 r"line 1, column 2\); give a streamline_plan\.json written by hf-streamline"),
    ("list", r"plan '.*edited_plan\.json': expected a JSON object \(base_model, num_layers_before, operations \.\.\.\), "
             r"found a list"),
    ("no_layers", r"plan '.*': operation 1 \(remove\) has no 'layers' list; every operation names the original layer "
                  r"indices it acts on"),
    ("out_of_range", r"plan '.*': operation 1 \(remove\) names layer 7, but the base model has layers 0\.\.4 "
                     r"\(num_layers_before=5\); the plan is damaged or was edited"),
    ("no_base", r"plan '.*': the plan has no 'base_model'"),
])
@pytest.mark.parametrize("command", ["apply", "mergekit"])
def test_damaged_plan(command, case, pattern, plan_dir, stories_dir, tmp_path, capsys, no_model_load):
    edits = {
        "not_json": "{not json",
        "list": "[1, 2]",
        "no_layers": lambda p: json.dumps({**p, "operations": [{"type": "remove"}]}),
        "out_of_range": lambda p: json.dumps({**p, "operations": [{"type": "remove", "layers": [7]}],
                                              "removed_layers": [7]}),
        "no_base": lambda p: json.dumps({k: v for k, v in p.items() if k != "base_model"}),
    }
    path = _edited_plan(plan_dir, tmp_path, edits[case])
    out = tmp_path / "out"
    if command == "apply":
        argv = ["apply", path, "--model", stories_dir, "--output", out]
    else:
        argv = ["mergekit", path, "--output", out]
    code, err = run_cli(argv, capsys)
    assert_one_error(code, err, command, pattern, tmp_path, out)


def _other_model(stories_dir: Path, folder: Path, **overrides) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    kw = dict(vocab_size=512, hidden_size=64, head_dim=8, intermediate_size=172, num_hidden_layers=5,
              num_attention_heads=8, num_key_value_heads=4)
    kw.update(overrides)
    LlamaForCausalLM(LlamaConfig(**kw)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(stories_dir).save_pretrained(folder)
    return folder


def test_plan_records_its_base_config(plan_dir):
    base = json.loads((plan_dir / "streamline_plan.json").read_text())["base_config"]
    assert base["architecture"] == "LlamaForCausalLM" and base["hidden_size"] == 64 and base["vocab_size"] == 512
    assert base["num_hidden_layers"] == 5 and re.fullmatch(r"[0-9a-f]{64}", base["config_sha256"])


@pytest.mark.parametrize("case, pattern", [
    ("hidden", r"--model '.*other' is not the base model the plan was made from \(stories260K\): hidden size 32 instead "
               r"of 64; give the plan's base model, or set --force"),
    ("vocab", r"is not the base model the plan was made from .*: vocab size 600 instead of 512"),
    ("config", r"has another config than the base model the plan was made from .*: the same architecture, sizes and layer "
               r"count, but config sha256 [0-9a-f]{12} instead of [0-9a-f]{12}; .* set --force if it is the same model"),
    ("layers", r"the plan is for a model with 5 layers \(stories260K\); --model '.*other' has 6: apply it to the model "
               r"it was made from"),
])
def test_plan_for_another_base_model_is_refused_unless_forced(case, pattern, plan_dir, stories_dir, tmp_path, capsys):
    overrides = {"hidden": dict(hidden_size=32, head_dim=4), "vocab": dict(vocab_size=600),
                 "config": dict(rope_theta=500.0), "layers": dict(num_hidden_layers=6)}[case]
    other = _other_model(stories_dir, tmp_path / "other", **overrides)
    out = tmp_path / "out"
    code, err = run_cli(["apply", plan_dir, "--model", other, "--output", out], capsys)
    assert_one_error(code, err, "apply", pattern, tmp_path, out)
    if case != "layers":  # --force applies it (with a warning); a layer count that differs can never be applied
        with pytest.warns(UserWarning, match="applied anyway: force"):
            code, err = run_cli(["apply", plan_dir, "--model", other, "--force", "--output", out], capsys)
        assert code == 0, err
        assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4


def test_apply_to_its_own_base_still_works(plan_dir, stories_dir, tmp_path, capsys):
    out = tmp_path / "again"
    code, err = run_cli(["apply", plan_dir, "--model", stories_dir, "--output", out], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file()


# ---- Ctrl-C, imports included -------------------------------------------------------------------------------------------

def _console_script() -> tuple[str, str]:
    """The module and function of the ``hf-streamline`` console script, from pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^hf-streamline\s*=\s*"([\w.]+):(\w+)"', text, re.M)
    assert m, "no hf-streamline console script in pyproject.toml"
    return m.group(1), m.group(2)


# the child runs what the console script runs, and sends itself SIGINT the moment MODULE starts importing
_CHILD = textwrap.dedent("""
    import os, signal, sys
    TARGET = sys.argv.pop(1)

    class InterruptAt:
        def find_spec(self, name, path=None, target=None):
            if name == TARGET:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, InterruptAt())
    sys.argv[0] = "hf-streamline"
    from {module} import {func}
    sys.exit({func}())
""")


@pytest.mark.parametrize("target", ["torch", "transformers", "hf_streamline.cli", "hf_streamline.workflows.prune",
                                    "hf_streamline.loading", "transformers.models.llama.modeling_llama"])
def test_ctrl_c_at_any_moment_is_one_line(target, stories_dir, tmp_path):
    """SIGINT while torch / transformers / the CLI import (before main runs), and, once the command runs, as it starts
    loading the model (hf_streamline.loading) and inside from_pretrained (the Llama modeling code)."""
    module, func = _console_script()
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(module=module, func=func), target, "prune",
                           "--model", str(stories_dir), "--layers", "1", "--output", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
                          # as a terminal has it, even when the tests run in the background (`cmd &` in a script
                          # starts them with SIGINT ignored, and the child would never see its own SIGINT)
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = proc.stderr
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted; no output was written"), err
    assert not out.exists()


@pytest.mark.parametrize("delay", [0.5, 1.5])
def test_real_ctrl_c_from_outside(delay, stories_dir, calib, tmp_path):
    """A real SIGINT from outside (as a terminal sends it) a moment after the console script starts."""
    import time

    module, func = _console_script()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())",
                             "prune", "--model", str(stories_dir), "--calibration", str(calib), "--samples", "8",
                             "--seq-len", "64", "--remove", "1", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted; no output was written"), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_import_hf_streamline_still_registers_and_exports_everything():
    code = textwrap.dedent("""
        import hf_streamline
        from transformers import AutoConfig, AutoModelForCausalLM
        from hf_streamline.modeling import StreamlineConfig, StreamlineForCausalLM
        assert type(AutoConfig.for_model("streamline")) is StreamlineConfig
        assert AutoModelForCausalLM._model_mapping[StreamlineConfig] is StreamlineForCausalLM
        for name in hf_streamline.__all__:
            assert getattr(hf_streamline, name) is not None, name
        from hf_streamline import StreamlinePlan, apply_plan, prune, load_model_and_tokenizer, Target, SCORERS  # noqa
        assert hf_streamline.utils.versions()["hf_streamline"] == hf_streamline.__version__
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


@pytest.mark.parametrize("argv, pattern", [
    (["prune", "--model", "m"], r"the following arguments are required: --output"),
    (["replace", "--model", "m", "--output", "o", "--solver", "nope"], r"argument --solver: invalid choice: 'nope'"),
    (["prune", "--model", "m", "--output", "o", "--remove", "2", "--bogus"], r"unrecognized arguments: --bogus"),
    (["nocmd"], r"invalid choice: 'nocmd'"),
])
def test_argparse_errors_are_one_line_too(argv, pattern, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(r"hf-streamline( \w+)?: error: ", lines[0]), err
    assert re.search(pattern, lines[0]), err
    assert "usage:" not in err
