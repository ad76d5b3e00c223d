"""``push_to_hub``: upload a saved model folder (weights, tokenizer, plan, card, remote code) in one commit.

Everything goes through ``huggingface_hub.HfApi``: the token is whatever that client finds (``token=``, ``HF_TOKEN``,
the stored login) and is never written anywhere; the endpoint is ``HF_ENDPOINT``.  One ``create_commit`` carries every
file, so the Hub never shows a half-uploaded model; files whose content the Hub already has are dropped from the
commit by the client, and a push that changes nothing makes no commit at all.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StreamlineError
from ..plan import PLAN_FILENAME
from .card import CARD_FILENAME, EVAL_RESULTS_DIR

# Never uploaded: VCS / caches / training checkpoints / our own temporary files.
IGNORE_DIRS = (".git", "__pycache__", ".cache", ".ipynb_checkpoints", "checkpoint-*", ".*.tmp-*", ".*.old-*")
IGNORE_FILES = ("*.pyc", ".DS_Store", ".*.tmp-*", "*.lock")
# Remote files of these kinds that the folder no longer has are deleted in the same commit (a stale weight shard
# next to a new index would load the wrong weights).
STALE_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.gguf", "*.pt", "*.pth",
                  f"{EVAL_RESULTS_DIR}/*")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml", ".py", ".jinja", ".model", ".cfg", ".toml")


@dataclass
class PushResult:
    """What a push did."""

    repo_id: str
    revision: str
    commit_url: str
    commit_oid: str
    changed: bool = field(metadata={"help": "False when the Hub already had every file: no commit was made."})
    files: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    card_generated: bool = False

    def __str__(self) -> str:
        return self.commit_url


def _ignored(rel: str) -> bool:
    parts = rel.split("/")
    if any(fnmatch.fnmatch(p, pat) for p in parts[:-1] for pat in IGNORE_DIRS):
        return True
    return any(fnmatch.fnmatch(parts[-1], pat) for pat in IGNORE_FILES)


def collect_files(folder: Path) -> dict[str, Path]:
    """``{path in repo: local path}`` of every file that is uploaded (sorted)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if not _ignored(rel) and p.is_file():
                out[rel] = p
    return dict(sorted(out.items()))


def check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise StreamlineError(f"model folder {str(folder)!r} does not exist; give the folder written by "
                              "hf-streamline prune / apply / merge / replace")
    if not (folder / "config.json").exists():
        raise StreamlineError(f"{str(folder)!r} has no config.json: it is not a saved model folder")
    if not any(any(fnmatch.fnmatch(p.name, pat) for pat in WEIGHT_PATTERNS) for p in folder.iterdir()):
        raise StreamlineError(f"{str(folder)!r} has no weights (*.safetensors / *.bin): save the model first")


def _check_no_secret(files: dict[str, Path], extra: dict[str, bytes], token: str | None) -> None:
    """Refuse to upload a text file that contains the token (it would become public)."""
    if not token or len(token) < 8:
        return
    needle = token.encode()
    for rel, p in files.items():
        if p.suffix.lower() in TEXT_SUFFIXES and p.stat().st_size < 50_000_000 and needle in p.read_bytes():
            raise StreamlineError(f"{rel} contains your Hub access token; remove it from the file before pushing "
                                  "(nothing was uploaded)")
    for rel, data in extra.items():
        if needle in data:  # pragma: no cover - generated content never holds it
            raise StreamlineError(f"the generated {rel} would contain your Hub access token; nothing was uploaded")


def _server_message(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _auth_error(exc: Exception, repo_id: str) -> StreamlineError:
    return StreamlineError(
        f"the Hub refused the request for {repo_id!r} ({_server_message(exc)}): no valid write token. Set HF_TOKEN, run "
        "`hf auth login`, or pass --token; nothing was uploaded")


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None, commit_description: str | None = None,
                report: Any = None, regenerate_card: bool = False, delete_stale: bool = True,
                endpoint: str | None = None) -> PushResult:
    """Upload the model folder to ``repo_id`` in one commit and return a ``PushResult`` (``.commit_url``).

    - The repository is created if missing (``private`` applies then) and reused if it exists.
    - ``revision``: a branch; created from ``main`` if missing.
    - The folder's ``README.md`` is uploaded as it is; without one (or with ``regenerate_card``) the card is rendered
      from the plan (and ``report``) for this ``repo_id`` and uploaded without touching the folder.
    - Weight files on the Hub that the folder no longer has are deleted in the same commit (``delete_stale``).
    - A push of an unchanged folder makes no commit (``result.changed`` is False).
    - On any failure nothing is committed and the local folder is untouched: run it again to retry.
    - ``endpoint``: another Hub-compatible server (default: ``HF_ENDPOINT`` or huggingface.co).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    folder = Path(folder)
    check_folder(folder)
    if not repo_id or repo_id.count("/") > 1 or repo_id.strip() != repo_id:
        raise StreamlineError(f"--repo-id {repo_id!r} is not a repository name; use NAME or NAMESPACE/NAME")
    files = collect_files(folder)
    token = token or None
    api = HfApi(endpoint=endpoint, token=token)
    try:
        user = api.whoami()
    except (HfHubHTTPError, LocalTokenNotFoundError) as exc:
        raise _auth_error(exc, repo_id) from None
    except Exception as exc:  # noqa: BLE001 - network errors: name the endpoint
        raise StreamlineError(f"cannot reach the Hub at {api.endpoint} ({_server_message(exc)}); check your "
                              "network or HF_ENDPOINT; nothing was uploaded") from None
    if "/" not in repo_id:
        repo_id = f"{user.get('name')}/{repo_id}"
    generated: dict[str, bytes] = {}
    card_generated = False
    if (regenerate_card or CARD_FILENAME not in files) and (folder / PLAN_FILENAME).exists():
        from huggingface_hub import eval_result_entries_to_yaml
        import yaml

        from .card import eval_result_entries, load_report, render_model_card

        card = render_model_card(folder, report=report, repo_id=repo_id)
        generated[CARD_FILENAME] = str(card).encode("utf-8")
        for name, entries in eval_result_entries(load_report(folder, report)).items():
            rel = f"{EVAL_RESULTS_DIR}/{name}"
            if rel not in files or regenerate_card:
                generated[rel] = yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False).encode()
        card_generated = True
    _check_no_secret(files, generated, token or get_token())

    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        branch = revision or "main"
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        remote = set(api.list_repo_files(repo_id, revision=branch))
        head_before = api.repo_info(repo_id, revision=branch).sha
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise _auth_error(exc, repo_id) from None
        raise StreamlineError(f"preparing {repo_id!r} on the Hub failed ({_server_message(exc)}); nothing was uploaded; "
                              "run the same command again to retry") from None

    ops: list[Any] = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(p)) for rel, p in files.items()
                      if rel not in generated]
    ops += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=data) for rel, data in generated.items()]
    local = set(files) | set(generated)
    deleted = sorted(r for r in remote if r not in local and any(fnmatch.fnmatch(r, pat) for pat in STALE_PATTERNS)) \
        if delete_stale else []
    ops += [CommitOperationDelete(path_in_repo=r) for r in deleted]
    if commit_message is None:
        commit_message = f"Upload {folder.name} with hf-streamline"
        try:
            from ..plan import StreamlinePlan

            plan = StreamlinePlan.load(folder)
            commit_message += (f" ({plan.method}: {len(plan.removed_layers)} of {plan.num_layers_before} layers, "
                               f"{plan.num_layers_before} -> {plan.num_layers_after})")
        except StreamlineError:
            pass
    try:
        info = api.create_commit(repo_id, ops, commit_message=commit_message, commit_description=commit_description,
                                 revision=branch)
    except HfHubHTTPError as exc:
        raise StreamlineError(f"push to {repo_id!r} failed: {_server_message(exc)}; no commit was made and "
                              f"{str(folder)!r} is unchanged; run the same command again to retry") from None
    except ValueError as exc:
        if "metadata" in str(exc).lower() and "README" in str(exc):
            raise StreamlineError(
                f"the Hub rejected the model card metadata (README.md) of {str(folder)!r}: {str(exc).strip()}\n"
                "Fix the field named above in README.md (or render it again with `hf-streamline card`); nothing was "
                "uploaded") from None
        raise
    return PushResult(repo_id=repo_id, revision=branch, commit_url=info.commit_url, commit_oid=info.oid,
                      changed=info.oid != head_before, files=sorted(local), deleted=deleted,
                      card_generated=card_generated)
