"""The Hub token never leaves the machine (issue 18, section 5), against the real huggingface_hub client and the
loopback Hub server.

- a file that holds the token is refused, named, whatever its name or extension (binary files too), before any
  request is made;
- hidden files (``.env``), ``*.log`` and training output stay local unless ``--include`` names them;
- a recipe's ``push.token`` is never written to disk, nor uploaded.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from hf_streamline.cli import main
from hf_streamline.errors import StreamlineError
from hf_streamline.publishing import push_to_hub

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import DEFAULT_TOKEN, HubServer  # noqa: E402


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer(lifetime=300) as server:
        yield server


@pytest.fixture
def cli_hub(hub, monkeypatch, tmp_path):
    """The in-process CLI talks to the loopback Hub: its endpoint, HF_TOKEN in the environment, an empty HF_HOME."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    return hub


@pytest.fixture(scope="module")
def pruned(stories_dir, tmp_path_factory):
    """stories260K with layer 2 removed, saved with its card (what `push` uploads)."""
    out = tmp_path_factory.mktemp("secrets") / "stories-pruned"
    assert main(["prune", "--model", str(stories_dir), "--layers", "2", "--output", str(out)]) == 0
    return out


def _copy(folder: Path, tmp_path: Path, name: str = "m") -> Path:
    work = tmp_path / name
    shutil.copytree(folder, work)
    return work


@pytest.mark.parametrize("name, content", [
    ("HF_TOKEN", lambda t: t.encode() + b"\n"),  # extension-less
    ("upload.sh", lambda t: f"export HF_TOKEN={t}\nhf upload ...\n".encode()),
    ("settings.ini", lambda t: f"[hub]\ntoken = {t}\n".encode()),
    ("extra_weights.bin", lambda t: os.urandom(3000) + t.encode() + os.urandom(3000)),  # binary
    ("notes/utf16.txt", lambda t: f"token: {t}".encode("utf-16-le")),
])
def test_a_file_holding_the_token_is_refused_whatever_its_name(hub, pruned, tmp_path, name, content):
    """Today only *.json/.md/.txt/... files are searched: an extension-less file, a .sh or a .bin is uploaded."""
    work = _copy(pruned, tmp_path)
    (work / name).parent.mkdir(parents=True, exist_ok=True)
    (work / name).write_bytes(content(DEFAULT_TOKEN))
    with pytest.raises(StreamlineError, match=rf"^{name} contains your Hub access token; .*nothing was uploaded"):
        push_to_hub(work, "tester/leak", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert not hub.requests, "the folder is searched before any request is made"


def test_the_token_found_by_huggingface_hub_is_searched_for_too(cli_hub, pruned, tmp_path, capsys):
    """No --token: the one `get_token()` finds (HF_TOKEN here) is the one that must not leak."""
    work = _copy(pruned, tmp_path)
    (work / "secret").write_text(DEFAULT_TOKEN)
    assert main(["push", str(work), "--repo-id", "tester/leak"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("hf-streamline push: error: secret contains your Hub access token; remove it from the file "
                           "(or the file from the folder) and push again; nothing was uploaded")
    assert DEFAULT_TOKEN not in err and not cli_hub.requests


def test_env_log_and_training_output_stay_local(cli_hub, pruned, tmp_path, capsys):
    """Today `.env`, `train.log` and extension-less files holding the token are uploaded with the model."""
    work = _copy(pruned, tmp_path)
    (work / ".env").write_text(f"HF_TOKEN={DEFAULT_TOKEN}\n")
    (work / "train.log").write_text(f"env: HF_TOKEN={DEFAULT_TOKEN}\n")
    (work / ".cache_notes").write_text("private\n")
    ckpt = work / "stories-pruned.training" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "trained.safetensors").write_bytes(b"x" * 100)
    (work / "checkpoint-5").mkdir()
    (work / "checkpoint-5" / "state.json").write_text("{}")
    assert main(["push", str(work), "--repo-id", "tester/clean"]) == 0
    out = capsys.readouterr().out
    assert "kept local" in out and ".env" in out and "train.log" in out
    remote = cli_hub.files("tester/clean")
    for gone in (".env", "train.log", ".cache_notes", "stories-pruned.training/checkpoint-10/trained.safetensors",
                 "checkpoint-5/state.json"):
        assert gone not in remote, gone
    assert "model.safetensors" in remote and "README.md" in remote and ".gitattributes" in remote
    assert all(DEFAULT_TOKEN.encode() not in data for data in remote.values())


def test_include_uploads_what_stays_local_but_never_the_token(hub, pruned, tmp_path):
    work = _copy(pruned, tmp_path)
    (work / "train.log").write_text("step 1 loss 2.0\n")
    (work / ".env").write_text(f"HF_TOKEN={DEFAULT_TOKEN}\n")
    (work / "logs").mkdir()
    (work / "logs" / "eval.log").write_text("ok\n")
    r = push_to_hub(work, "tester/inc", token=DEFAULT_TOKEN, endpoint=hub.url, include=["*.log"])
    remote = hub.files("tester/inc")
    assert remote["train.log"] == b"step 1 loss 2.0\n" and remote["logs/eval.log"] == b"ok\n"
    assert ".env" not in remote and r.excluded == [".env"]
    with pytest.raises(StreamlineError, match=r"^\.env contains your Hub access token"):
        push_to_hub(work, "tester/inc", token=DEFAULT_TOKEN, endpoint=hub.url, include=[".env"])


def test_a_recipe_push_token_is_never_written_nor_uploaded(cli_hub, stories_dir, tmp_path, monkeypatch):
    """Today `streamline_recipe.yaml` keeps `push: {token: ...}` in the output folder, and push uploads it."""
    from hf_streamline.recipes import run_recipe, validate_recipe

    monkeypatch.delenv("HF_TOKEN")  # the recipe's token is the only one
    out = tmp_path / "pushed"
    recipe = validate_recipe({"model": str(stories_dir), "method": "remove", "remove": {"layers": "2"},
                              "output": str(out), "push": {"repo_id": "tester/from-recipe", "token": DEFAULT_TOKEN}})
    assert DEFAULT_TOKEN not in recipe.to_yaml()
    run_recipe(recipe)
    saved = (out / "streamline_recipe.yaml").read_text()
    assert DEFAULT_TOKEN not in saved and yaml.safe_load(saved)["push"] == {"repo_id": "tester/from-recipe"}
    remote = cli_hub.files("tester/from-recipe")
    assert "streamline_recipe.yaml" in remote
    assert all(DEFAULT_TOKEN.encode() not in data for data in remote.values())
    for p in out.rglob("*"):
        assert not p.is_file() or DEFAULT_TOKEN.encode() not in p.read_bytes(), p


def test_files_written_elsewhere_are_uploaded_without_token_or_local_paths(hub, pruned, tmp_path):
    """A recipe with a token and a plan / adapter config with absolute paths (an older hf-streamline, a hand edit)
    are uploaded in their portable form; the local files are not touched."""
    work = _copy(pruned, tmp_path)
    (work / "streamline_recipe.yaml").write_text(yaml.safe_dump(
        {"model": "/home/someone/models/base", "method": "remove", "output": str(work),
         "push": {"repo_id": "tester/old", "token": DEFAULT_TOKEN}}))
    plan = json.loads((work / "streamline_plan.json").read_text())
    plan["calibration"] = {"source": "/home/someone/corpus/calib.txt", "n_samples": 2}
    (work / "streamline_plan.json").write_text(json.dumps(plan))
    (work / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/home/someone/out/pruned-base",
                                                          "peft_type": "LORA"}))
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    push_to_hub(work, "tester/old", token=DEFAULT_TOKEN, endpoint=hub.url)
    remote = hub.files("tester/old")
    assert all(DEFAULT_TOKEN.encode() not in data and b"/home/someone" not in data for data in remote.values())
    assert yaml.safe_load(remote["streamline_recipe.yaml"])["model"] == "base"
    assert json.loads(remote["streamline_plan.json"])["calibration"]["source"] == "calib.txt"
    assert json.loads(remote["adapter_config.json"])["base_model_name_or_path"] == "pruned-base"
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before


def test_scanning_a_large_binary_file_reads_it_in_chunks(tmp_path):
    from hf_streamline.publishing.push import file_holds

    big = tmp_path / "w.bin"
    needle = DEFAULT_TOKEN.encode()
    with open(big, "wb") as fh:  # the token straddles a chunk boundary
        fh.write(b"\0" * (1000 - 5) + needle + b"\0" * 5000)
    assert file_holds(big, [needle], chunk=1000)
    assert not file_holds(big, [b"hf_other_token_xyz"], chunk=1000)
