"""``push_to_hub``: upload a saved model folder (weights, tokenizer, plan, card, remote code) in one commit.

Everything goes through ``huggingface_hub.HfApi``: the token is whatever that client finds (``token=``, ``HF_TOKEN``,
the stored login) and is never written anywhere; the endpoint is ``HF_ENDPOINT``.

The token never leaves the machine: before any request, every byte of every file to be uploaded (binary files too,
read in chunks) is searched for it (the one given, ``get_token()``'s and the stored ones), and a file that holds it
stops the push, named.  Hidden files and folders (``.env``, ``.netrc``, ...), ``*.log`` files and training output
(``OUTPUT.training/``, ``checkpoint-*``) stay local unless ``include`` (``--include PATTERN``) names them.

The card, plan and recipe that are uploaded name no path of this machine and no placeholder: a card rendered by
hf-streamline is retitled for ``repo_id`` (its snippet loads ``repo_id``, not ``your-username/...``), a plan or a
recipe that still holds an absolute path (an older hf-streamline wrote it) is uploaded in its portable form, a
recipe never carries ``push.token``, and an adapter's ``base_model_name_or_path`` is uploaded as a Hub id or a name.

One ``create_commit`` carries every file, so the Hub never shows a half-uploaded model; files whose content the Hub
already has are dropped from the commit by the client, and a push that changes nothing makes no commit at all.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StreamlineError
from ..plan import PLAN_FILENAME
from .card import EVAL_RESULTS_DIR
from .folder import CARD_FILENAME

# Never uploaded: VCS / caches / our own temporary files.
IGNORE_DIRS = (".git", "__pycache__", ".cache", ".ipynb_checkpoints", ".*.tmp-*", ".*.old-*")
IGNORE_FILES = ("*.pyc", ".DS_Store", ".*.tmp-*", "*.lock")
# Kept local unless `include` names them: hidden files and folders (secrets live there: .env, .netrc, .git-credentials),
# logs (they echo environments and command lines), training output (OUTPUT.training/, checkpoint-*).
EXCLUDE_DIRS = (".*", "*.training", "checkpoint-*", "runs", "wandb")
EXCLUDE_FILES = (".*", "*.log")
# hidden entries the Hub reads (our eval results, the repository's LFS rules): uploaded (and searched for the token)
PUBLIC_HIDDEN = (EVAL_RESULTS_DIR, ".gitattributes")
SCAN_CHUNK = 16 * 2**20
# Remote files of these kinds that the folder no longer has are deleted in the same commit (a stale weight shard
# next to a new index would load the wrong weights).
STALE_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.gguf", "*.pt", "*.pth",
                  f"{EVAL_RESULTS_DIR}/*")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")


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
    excluded: list[str] = field(default_factory=list, metadata={"help": "Files kept local (hidden, logs, training)."})

    def __str__(self) -> str:
        return self.commit_url


def _ignored(rel: str) -> bool:
    parts = rel.split("/")
    if any(fnmatch.fnmatch(p, pat) for p in parts[:-1] for pat in IGNORE_DIRS):
        return True
    return any(fnmatch.fnmatch(parts[-1], pat) for pat in IGNORE_FILES)


def _excluded(rel: str) -> bool:
    """Kept local by default: a hidden file or folder, a log, training output (see ``EXCLUDE_*``)."""
    parts = rel.split("/")
    if parts[0] in PUBLIC_HIDDEN:
        return False
    if any(fnmatch.fnmatch(p, pat) for p in parts[:-1] for pat in EXCLUDE_DIRS):
        return True
    return any(fnmatch.fnmatch(parts[-1], pat) for pat in EXCLUDE_FILES)


def _included(rel: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether a ``--include`` pattern names ``rel``: the path, the file's name, or a folder it lies in."""
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.strip().rstrip("/")
        if not pat:
            continue
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(parts[-1], pat) or rel.startswith(pat + "/") \
                or any(fnmatch.fnmatch(p, pat) for p in parts[:-1]):
            return True
    return False


def collect_files(folder: Path, include: tuple[str, ...] | list[str] = (), excluded: list[str] | None = None
                  ) -> dict[str, Path]:
    """``{path in repo: local path}`` of every file that is uploaded (sorted).  Hidden files and folders, logs and
    training output are left out unless a pattern of ``include`` names them; what was left out is appended to
    ``excluded`` when a list is given."""
    folder = Path(folder)
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if _ignored(rel) or not p.is_file():
                continue
            if _excluded(rel) and not _included(rel, include):
                if excluded is not None:
                    excluded.append(rel)
                continue
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


def known_tokens(token: str | None = None) -> list[str]:
    """Every Hub token this machine would send: ``token``, ``get_token()``'s (``HF_TOKEN``, the login) and the
    stored ones (``hf auth login`` keeps several)."""
    candidates = [token]
    try:
        from huggingface_hub import get_token

        candidates.append(get_token())
    except Exception:  # noqa: BLE001 - no token store is not an error here
        pass
    try:
        from huggingface_hub.utils._auth import get_stored_tokens

        candidates += list(get_stored_tokens().values())
    except Exception:  # noqa: BLE001 - older huggingface_hub, unreadable store
        pass
    out: list[str] = []
    for t in candidates:
        if isinstance(t, str) and len(t.strip()) >= 8 and t.strip() not in out:
            out.append(t.strip())
    return out


def _needles(tokens: list[str]) -> list[bytes]:
    """The byte forms a token takes in a file: UTF-8 / ASCII, and UTF-16 (files saved by some Windows editors)."""
    out: list[bytes] = []
    for t in tokens:
        for enc in ("utf-8", "utf-16-le", "utf-16-be"):
            b = t.encode(enc)
            if b not in out:
                out.append(b)
    return out


def file_holds(path: str | os.PathLike, needles: list[bytes], chunk: int = SCAN_CHUNK) -> bool:
    """Whether any of ``needles`` occurs in the bytes of the file (read in chunks that overlap by a needle's
    length, so a multi-GB weight file costs one sequential read and no more memory than a chunk)."""
    if not needles:
        return False
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                return False
            buf = tail + block
            if any(n in buf for n in needles):
                return True
            tail = buf[-overlap:] if overlap else b""


def _check_no_secret(files: dict[str, Path], extra: dict[str, bytes], tokens: str | list[str] | None) -> None:
    """Refuse to upload any file that contains a Hub token, whatever its name, extension or content type (it would
    become public, and anyone could act as you on the Hub)."""
    needles = _needles([tokens] if isinstance(tokens, str) else list(tokens or []))
    if not needles:
        return
    for rel, p in files.items():
        if rel in extra:
            continue  # uploaded from the generated content, checked below
        if file_holds(p, needles):
            raise StreamlineError(f"{rel} contains your Hub access token; remove it from the file (or the file from "
                                  "the folder) and push again; nothing was uploaded")
    for rel, data in extra.items():
        if any(n in data for n in needles):
            raise StreamlineError(f"the generated {rel} would contain your Hub access token; remove the token from "
                                  "the plan, recipe or card it comes from; nothing was uploaded")


def _server_message(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _auth_error(exc: Exception, repo_id: str) -> StreamlineError:
    return StreamlineError(
        f"the Hub refused the request for {repo_id!r} ({_server_message(exc)}): no valid write token. Set HF_TOKEN, run "
        "`hf auth login`, or pass a token; nothing was uploaded", argument="token")


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None, commit_description: str | None = None,
                report: Any = None, regenerate_card: bool = False, delete_stale: bool = True,
                endpoint: str | None = None, include: tuple[str, ...] | list[str] = (),
                base_model: str | None = None) -> PushResult:
    """Upload the model folder to ``repo_id`` in one commit and return a ``PushResult`` (``.commit_url``).

    - The repository is created if missing (``private`` applies then) and reused if it exists.
    - ``revision``: a branch; created from ``main`` if missing.
    - The folder's ``README.md`` is uploaded as it is; without one (or with ``regenerate_card``) the card is rendered
      from the plan (and ``report``) for this ``repo_id`` and uploaded without touching the folder.
    - Weight files on the Hub that the folder no longer has are deleted in the same commit (``delete_stale``).
    - A push of an unchanged folder makes no commit (``result.changed`` is False).
    - A README.md written by hf-streamline is uploaded for ``repo_id``: re-rendered when it is unedited, else only
      its title and ``your-username/...`` placeholders are changed; ``base_model`` (``--base-model``) sets the Hub
      id of a base model that the plan records as a local folder (``base_model`` / ``base_model_relation``).
    - No file that holds the Hub token is uploaded (every byte is searched; the push stops, naming the file);
      hidden files, ``*.log`` and training output stay local unless a pattern of ``include`` names them.
    - On any failure nothing is committed and the local folder is untouched: run it again to retry.
    - ``endpoint``: another Hub-compatible server (default: ``HF_ENDPOINT`` or huggingface.co).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    folder = Path(folder)
    check_folder(folder)
    if not repo_id or repo_id.count("/") > 1 or repo_id.strip() != repo_id:
        raise StreamlineError("not a repository name; use NAME or NAMESPACE/NAME", argument="repo_id", value=repo_id)
    if base_model:
        from .folder import check_hub_id

        check_hub_id(base_model)
    excluded: list[str] = []
    files = collect_files(folder, include=include, excluded=excluded)
    token = token or None
    tokens = known_tokens(token)
    portable = portable_files(folder, files, base_model)  # plan / recipe / adapter config without local paths
    _check_no_secret(files, portable, tokens)  # before any request: a leaking folder never reaches the network
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
    generated: dict[str, bytes] = dict(portable)
    card_generated = False
    if (regenerate_card or CARD_FILENAME not in files) and (folder / PLAN_FILENAME).exists():
        from huggingface_hub import eval_result_entries_to_yaml
        import yaml

        from .card import render_model_card
        from .folder import load_report
        from .metadata import eval_result_entries

        card = render_model_card(folder, report=report, repo_id=repo_id, base_model=base_model)
        generated[CARD_FILENAME] = str(card).encode("utf-8")
        for name, entries in eval_result_entries(load_report(folder, report)).items():
            rel = f"{EVAL_RESULTS_DIR}/{name}"
            if rel not in files or regenerate_card:
                generated[rel] = yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False).encode()
        card_generated = True
    elif CARD_FILENAME in files:
        from .card import card_for_repo

        text = files[CARD_FILENAME].read_text(encoding="utf-8", errors="replace")
        new = card_for_repo(folder, text, repo_id, report=report, base_model=base_model)
        if new != text:
            generated[CARD_FILENAME] = new.encode("utf-8")
    _check_no_secret({}, generated, tokens)

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
                      card_generated=card_generated, excluded=excluded)


def portable_files(folder: Path, files: dict[str, Path], base_model: str | None = None) -> dict[str, bytes]:
    """Uploaded contents that replace local files which name paths of this machine or a secret: a plan or a
    recipe written by an older hf-streamline (absolute paths, ``push.token``), and an adapter's
    ``adapter_config.json`` whose ``base_model_name_or_path`` is a local folder (a Hub id where the adapter applies
    to the Hub base model, else the folder's name).  The local files are not touched."""
    import json

    from ..portable import is_hub_id, portable_model_name

    out: dict[str, bytes] = {}
    plan = None
    if PLAN_FILENAME in files:
        from ..plan import StreamlinePlan

        try:
            plan = StreamlinePlan.load(files[PLAN_FILENAME])
        except (StreamlineError, ValueError):
            plan = None
        if plan is not None:
            text = files[PLAN_FILENAME].read_text(encoding="utf-8")
            portable = plan.portable().to_json() + "\n"
            if json.loads(portable) != json.loads(text):
                out[PLAN_FILENAME] = portable.encode("utf-8")
    from ..recipes.runner import RECIPE_FILENAME

    if RECIPE_FILENAME in files:
        import yaml

        from ..recipes.schema import Recipe

        try:
            data = yaml.safe_load(files[RECIPE_FILENAME].read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            portable = Recipe(data).to_yaml(portable=True)
            if yaml.safe_load(portable) != data:
                out[RECIPE_FILENAME] = portable.encode("utf-8")
    if "adapter_config.json" in files:
        try:
            cfg = json.loads(files["adapter_config.json"].read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            cfg = None
        base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
        if isinstance(base, str) and base and not is_hub_id(base):
            from .folder import is_structural

            hub_base = base_model or (plan.base_model if plan is not None else None)
            on_base = plan is not None and not is_structural(plan) and hub_base and is_hub_id(hub_base)
            cfg["base_model_name_or_path"] = hub_base if on_base else portable_model_name(base)
            out["adapter_config.json"] = (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return out
