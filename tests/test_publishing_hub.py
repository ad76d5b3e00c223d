"""push_to_hub against the real huggingface_hub client, talking to a loopback server that speaks the Hub protocol.

The end-to-end tests run the client in fresh processes with HF_ENDPOINT set before import and an empty HF_HOME, so
``from_pretrained`` really downloads.  The fault tests run in-process with ``endpoint=`` (same client code paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hf_streamline.errors import StreamlineError
from hf_streamline.publishing import push_to_hub

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import DEFAULT_TOKEN, HubServer, client_env  # noqa: E402

PROMPT_IDS = [[1, 403, 407, 261, 378, 287, 316, 22]]
SUBPROCESS_TIMEOUT = 240


@pytest.fixture
def hub(monkeypatch):
    # the loopback server is the Hub here: a user's (or CI's) HF_HUB_OFFLINE=1 must not block in-process pushes
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer(lifetime=300) as server:
        yield server


@pytest.fixture(scope="module")
def pruned(stories_dir, data_dir, tmp_path_factory):
    """stories260K with 2 of 5 layers removed (block influence), saved; and its logits on PROMPT_IDS."""
    from hf_streamline import CalibrationConfig, Target, build_calibration, load_model_and_tokenizer, prune, save_pruned

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    calib = build_calibration(tok, str(data_dir / "text" / "stories260k_samples.txt"),
                              CalibrationConfig(n_samples=4, seq_len=64))
    model, plan = prune(model, metric="block_influence", target=Target(layers=2), calibration=calib,
                        base_model="karpathy/stories260K", progress=False)
    out = tmp_path_factory.mktemp("hub") / "stories-pruned"
    save_pruned(model, tok, plan, out)
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT_IDS)).logits
    return out, plan, logits


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _python(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=SUBPROCESS_TIMEOUT)
    assert r.returncode == 0, f"client process failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


LOAD_AND_DUMP = """
    import json, sys, torch
    {prelude}
    from transformers import AutoModelForCausalLM
    from huggingface_hub import ModelCard
    model = AutoModelForCausalLM.from_pretrained({repo!r}{kwargs})
    with torch.no_grad():
        logits = model(torch.tensor({ids!r})).logits
    torch.save(logits, {out!r})
    card = ModelCard.load({repo!r})
    json.dump({{"class": type(model).__name__, "module": type(model).__module__, "data": card.data.to_dict()}},
              open({meta!r}, "w"))
"""


def test_push_then_load_in_a_fresh_process(hub, pruned, tmp_path):
    """CLI push (one commit with every file), then from_pretrained + ModelCard.load from an empty cache."""
    folder, plan, logits = pruned
    before = _snapshot(folder)
    env = client_env(hub, tmp_path / "home-push")
    r = subprocess.run([sys.executable, "-m", "hf_streamline.cli", "push", str(folder), "--repo-id", "stories-pruned"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    url = r.stdout.strip().splitlines()[-1]
    repo = hub.repo("tester/stories-pruned")
    assert url == f"{hub.url}/tester/stories-pruned/commit/{repo.branches['main']}"
    assert DEFAULT_TOKEN not in r.stdout + r.stderr
    # one commit on top of the repo's initial one, carrying model, tokenizer, plan and the card
    assert hub.commit_count("tester/stories-pruned") == 2 and hub.count("commit") == 1
    remote = hub.files("tester/stories-pruned")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "streamline_plan.json",
                 "README.md"):
        assert name in remote, name
    assert remote["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert all(DEFAULT_TOKEN.encode() not in data for data in remote.values())
    assert _snapshot(folder) == before  # the card was rendered in memory: the folder is untouched

    env = client_env(hub, tmp_path / "home-load", token=None)  # a fresh cache and an anonymous user
    out, meta = tmp_path / "logits.pt", tmp_path / "meta.json"
    _python(LOAD_AND_DUMP.format(prelude="", repo="tester/stories-pruned", kwargs="", ids=PROMPT_IDS, out=str(out),
                                 meta=str(meta)), env, tmp_path)
    assert torch.equal(torch.load(out), logits)
    m = json.loads(meta.read_text())
    assert m["class"] == "LlamaForCausalLM" and m["module"].startswith("transformers.")
    data = m["data"]
    assert data["base_model"] == "karpathy/stories260K" and data["library_name"] == "transformers"
    assert data["streamline"]["removed_layers"] == plan.removed_layers
    assert "block_influence" in data["tags"]
    assert 'from_pretrained("tester/stories-pruned")' in remote["README.md"].decode()
    assert (tmp_path / "home-load" / "hub").is_dir()  # it really went through the download cache
    assert not hub.unknown, hub.unknown


def test_second_push_of_an_unchanged_folder_makes_no_commit(hub, pruned):
    folder, _, _ = pruned
    first = push_to_hub(folder, "tester/m", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert first.changed and hub.commit_count("tester/m") == 2
    second = push_to_hub(folder, "tester/m", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert not second.changed
    assert second.commit_oid == first.commit_oid and hub.commit_count("tester/m") == 2
    assert hub.count("commit") == 1  # the client dropped the empty commit; the server was not asked


def test_existing_repo_is_reused(hub, pruned):
    folder, _, _ = pruned
    hub.create_repo("tester/exists")
    r = push_to_hub(folder, "tester/exists", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert r.repo_id == "tester/exists" and r.changed
    assert hub.count("create") == 1  # asked, answered 409, went on
    assert ".gitattributes" in hub.files("tester/exists") and "model.safetensors" in hub.files("tester/exists")


def test_commit_failure_is_clear_leaves_folder_untouched_and_retry_succeeds(hub, pruned):
    folder, _, _ = pruned
    before = _snapshot(folder)
    hub.fail("commit", status=500)
    with pytest.raises(StreamlineError, match=r"push to 'tester/f' failed: .*500.*no commit was made.*retry"):
        push_to_hub(folder, "tester/f", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert hub.commit_count("tester/f") == 1  # only the repo's initial commit
    assert _snapshot(folder) == before
    r = push_to_hub(folder, "tester/f", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert r.changed and hub.commit_count("tester/f") == 2


def test_card_rejected_by_the_hub_names_the_field(hub, pruned, tmp_path):
    from hf_streamline.publishing import write_model_card

    folder, _, _ = pruned
    work = tmp_path / "bad"
    shutil.copytree(folder, work)
    write_model_card(work, extra={"license": "not-a-license"})
    with pytest.raises(StreamlineError, match=r'README\.md[\s\S]*"license" must be one of'):
        push_to_hub(work, "tester/bad", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert hub.count("commit") == 0 and hub.count("preupload") == 0


def test_bad_or_missing_token(hub, pruned, monkeypatch):
    folder, _, _ = pruned
    with pytest.raises(StreamlineError, match="HF_TOKEN"):
        push_to_hub(folder, "tester/t", token="hf_wrong_token", endpoint=hub.url)
    import huggingface_hub.hf_api as hf_api

    monkeypatch.setattr(hf_api, "get_token", lambda: None)
    monkeypatch.setattr("huggingface_hub.utils._headers.get_token", lambda: None)
    with pytest.raises(StreamlineError, match="no valid write token"):
        push_to_hub(folder, "tester/t", endpoint=hub.url)
    assert not hub.repos


def test_a_file_holding_the_token_is_refused(hub, pruned, tmp_path):
    folder, _, _ = pruned
    work = tmp_path / "leak"
    shutil.copytree(folder, work)
    (work / "notes.txt").write_text(f"my token is {DEFAULT_TOKEN}\n")
    with pytest.raises(StreamlineError, match="notes.txt contains your Hub access token"):
        push_to_hub(work, "tester/leak", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert not hub.repos


def test_branch_private_and_stale_weights(hub, pruned, tmp_path):
    from huggingface_hub import HfApi

    folder, _, _ = pruned
    api = HfApi(endpoint=hub.url, token=DEFAULT_TOKEN)
    r = push_to_hub(folder, "tester/p", token=DEFAULT_TOKEN, endpoint=hub.url, private=True, revision="dev")
    assert r.revision == "dev" and hub.repo("tester/p").private
    assert "model.safetensors" in hub.files("tester/p", "dev") and "model.safetensors" not in hub.files("tester/p", "main")
    assert HfApi(endpoint=hub.url, token=False).repo_exists("tester/p") is False  # private: anonymous users see nothing
    # a stale shard on the Hub goes away in the same commit as the new upload
    api.upload_file(path_or_fileobj=b"old", path_in_repo="pytorch_model.bin", repo_id="tester/p", revision="dev")
    work = tmp_path / "p2"
    shutil.copytree(folder, work)
    (work / "extra.txt").write_text("new\n")
    n = hub.commit_count("tester/p", "dev")
    r = push_to_hub(work, "tester/p", token=DEFAULT_TOKEN, endpoint=hub.url, revision="dev")
    assert r.deleted == ["pytorch_model.bin"] and hub.commit_count("tester/p", "dev") == n + 1
    files = hub.files("tester/p", "dev")
    assert "pytorch_model.bin" not in files and files["extra.txt"] == b"new\n"


def test_lfs_uploads_and_cdn_downloads(hub, pruned, tmp_path, monkeypatch):
    """With the server answering "lfs" (and Xet disabled) the client uploads weights through the LFS batch API, and
    downloads follow the redirect to the CDN host without the token."""
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_hub_download

    folder, _, _ = pruned
    hub.upload_mode = "lfs"
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    push_to_hub(folder, "tester/lfs", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert hub.count("lfs-batch") == 1 and hub.count("lfs-upload") == 1
    blob = hub.repo("tester/lfs").resolve("main").files["model.safetensors"]
    assert blob.lfs
    again = push_to_hub(folder, "tester/lfs", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert not again.changed  # sha256 oids compared for LFS files
    path = hf_hub_download("tester/lfs", "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / "c",
                           token=DEFAULT_TOKEN)
    assert Path(path).read_bytes() == (folder / "model.safetensors").read_bytes()
    assert hub.count("cdn") == 1


def test_renamed_repo_redirects(hub, pruned, tmp_path):
    from huggingface_hub import hf_hub_download

    folder, _, _ = pruned
    push_to_hub(folder, "tester/old-name", token=DEFAULT_TOKEN, endpoint=hub.url)
    hub.rename("tester/old-name", "tester/new-name")
    path = hf_hub_download("tester/old-name", "config.json", endpoint=hub.url, cache_dir=tmp_path / "c")
    assert json.loads(Path(path).read_text())["num_hidden_layers"] == 3


def test_push_refuses_what_is_not_a_model_folder(hub, tmp_path):
    with pytest.raises(StreamlineError, match="does not exist"):
        push_to_hub(tmp_path / "nope", "tester/x", token=DEFAULT_TOKEN, endpoint=hub.url)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(StreamlineError, match="no weights"):
        push_to_hub(tmp_path, "tester/x", token=DEFAULT_TOKEN, endpoint=hub.url)
    assert not hub.requests


def _remote_code_model(stories_dir, tmp_path):
    """A StreamlineForCausalLM (block 2..3 of stories260K replaced by an untrained MLP), saved with remote code."""
    from hf_streamline import replacement
    from hf_streamline import StreamlinePlan, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    model, op = replacement.replace_block(model, 2, 2, "mlp")
    plan = StreamlinePlan(base_model="karpathy/stories260K", num_layers_before=5, method="replace",
                          selection="user", removed_layers=[2, 3], operations=[op])
    out = tmp_path / "streamline-mlp"
    replacement.save_replaced(model, tok, plan, out)
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT_IDS)).logits
    return out, logits


def test_remote_code_model_loads_without_hf_streamline(hub, stories_dir, tmp_path):
    folder, logits = _remote_code_model(stories_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "streamline" and config.get("auto_map")
    py_files = sorted(p.name for p in folder.glob("*.py"))
    assert py_files, "the folder must carry its remote code"
    r = push_to_hub(folder, "tester/sl", token=DEFAULT_TOKEN, endpoint=hub.url)
    remote = hub.files("tester/sl")
    assert all(name in remote for name in py_files) and "README.md" in r.files
    env = client_env(hub, tmp_path / "home", token=None)
    out, meta = tmp_path / "logits.pt", tmp_path / "meta.json"
    # hf_streamline must not be importable in the loading process: only the repository's remote code runs
    prelude = "sys.modules['hf_streamline'] = None"
    _python(LOAD_AND_DUMP.format(prelude=prelude, repo="tester/sl", kwargs=", trust_remote_code=True", ids=PROMPT_IDS,
                                 out=str(out), meta=str(meta)), env, tmp_path)
    assert torch.equal(torch.load(out), logits)
    m = json.loads(meta.read_text())
    assert m["class"] == "StreamlineForCausalLM" and m["module"].startswith("transformers_modules")
    assert "custom_code" in m["data"]["tags"]


@pytest.mark.skipif(os.environ.get("HF_STREAMLINE_REAL_HUB") != "1", reason="set HF_STREAMLINE_REAL_HUB=1 and HF_TOKEN "
                    "(write) to push to the real Hub; optional HF_STREAMLINE_REAL_HUB_REPO=namespace/name")
def test_push_to_the_real_hub(pruned, tmp_path):
    """Opt-in: the same push against huggingface.co (or HF_ENDPOINT), to a private repo, then a download check."""
    from huggingface_hub import HfApi, hf_hub_download

    folder, plan, _ = pruned
    api = HfApi()
    user = api.whoami()["name"]
    repo_id = os.environ.get("HF_STREAMLINE_REAL_HUB_REPO") or f"{user}/hf-streamline-test-stories-pruned"
    r = push_to_hub(folder, repo_id, private=True)
    assert r.commit_url.startswith("https://") or r.commit_url.startswith("http")
    plan_path = hf_hub_download(repo_id, "streamline_plan.json", cache_dir=tmp_path / "c")
    assert json.loads(Path(plan_path).read_text())["removed_layers"] == plan.removed_layers
    assert not push_to_hub(folder, repo_id, private=True).changed
