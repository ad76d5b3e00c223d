"""A small loopback server that speaks the Hugging Face Hub's HTTP protocol as the real ``huggingface_hub`` client uses it.

Written from the requests ``huggingface_hub`` 2.x sends (see ``hf_api.py``, ``_commit_api.py``, ``file_download.py``):

- ``GET  /api/whoami-v2``                                      who the token belongs to
- ``POST /api/repos/create``                                   create a repo (409 + ``url`` when it exists)
- ``POST /api/validate-yaml``                                  check README.md metadata (400 + ``errors`` naming the field)
- ``POST /api/models/NS/NAME/preupload/REV``                   upload mode per file (``regular`` / ``lfs``) + remote oid
- ``POST /api/models/NS/NAME/commit/REV``                      NDJSON commit: header, file (base64), lfsFile, deletedFile
- ``POST /NS/NAME.git/info/lfs/objects/batch`` + ``PUT /_lfs/OID``   LFS "basic" upload (only in ``upload_mode="lfs"``)
- ``GET|HEAD /NS/NAME/resolve/REV/PATH``                       file download: ETag, X-Repo-Commit, Content-Length; LFS
                                                               files redirect to a "CDN" host with X-Linked-Etag/-Size
- ``GET  /api/models/NS/NAME[/revision/REV]``                  model_info / repo_info (sha, siblings, cardData)
- ``GET  /api/models/NS/NAME/tree/REV[/PATH]``, ``POST .../paths-info/REV``   listings
- ``POST /api/models/NS/NAME/branch/BRANCH``, ``GET .../refs``, ``GET .../commits/REV``

Like the real Hub, the server makes a commit even when it changes nothing: avoiding empty commits is the client's job
(it compares the ``oid`` returned by preupload with the local file's hash).  Regular files have git-blob SHA-1 oids,
LFS files SHA-256.  Renamed repositories answer 307 with a relative ``Location``.

Faults for tests: ``server.fail("commit", status=500)`` makes the next commit request fail once.
Run standalone: ``python tests/hub_server.py --port 8000`` then ``HF_ENDPOINT=http://127.0.0.1:8000 HF_TOKEN=hf_test ...``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_TOKEN = "hf_streamline_test_token"
DEFAULT_USER = "tester"

GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
"""

LICENSES = {
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0",
    "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0",
    "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research", "intel-research",
    "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0",
    "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2", "llama3",
    "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "unknown", "other",
}
PIPELINE_TAGS = {
    "text-generation", "text-classification", "token-classification", "fill-mask", "question-answering",
    "summarization", "translation", "text2text-generation", "feature-extraction", "sentence-similarity",
    "zero-shot-classification", "image-classification", "image-text-to-text", "automatic-speech-recognition",
    "text-to-image", "text-to-speech", "other",
}
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool = False

    @property
    def sha1(self) -> str:
        return git_blob_sha1(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        """What preupload reports and the client compares with its own hash of the file."""
        return self.sha256 if self.lfs else self.sha1

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.sha1


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    files: dict[str, Blob]
    author: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    owner: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    created: str = ""

    def resolve(self, rev: str) -> Commit | None:
        if rev in self.branches:
            return self.commits[self.branches[rev]]
        if COMMIT_RE.match(rev) and rev in self.commits:
            return self.commits[rev]
        return None

    def history(self, rev: str) -> list[Commit]:
        c, out = self.resolve(rev), []
        while c is not None:
            out.append(c)
            c = self.commits.get(c.parent) if c.parent else None
        return out


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


class HubServer:
    """In-memory Hub.  ``with HubServer() as hub: ...`` or ``hub.start()`` / ``hub.stop()``; ``hub.url`` is the
    endpoint.  ``lifetime`` (seconds) bounds how long it runs even if a test forgets to stop it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tokens: dict[str, str] | None = None,
                 upload_mode: str = "regular", lifetime: float | None = 300.0):
        if upload_mode not in ("regular", "lfs"):
            raise ValueError("upload_mode is 'regular' or 'lfs'")
        self.host, self.port = host, port
        self.tokens = dict(tokens) if tokens is not None else {DEFAULT_TOKEN: DEFAULT_USER}
        self.upload_mode = upload_mode
        self.lifetime = lifetime
        self.repos: dict[tuple[str, str], Repo] = {}
        self.renamed: dict[tuple[str, str], str] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, endpoint name, path)
        self.unknown: list[tuple[str, str]] = []
        self.faults: dict[str, list[tuple[int, str]]] = {}
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def cdn_url(self) -> str:
        """A second origin for LFS downloads (the client treats another host as a CDN and drops the auth header)."""
        other = "localhost" if self.host == "127.0.0.1" else "127.0.0.1"
        return f"http://{other}:{self.port}"

    def start(self) -> "HubServer":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        if self.lifetime:
            self._timer = threading.Timer(self.lifetime, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._httpd is not None:
            httpd, self._httpd = self._httpd, None
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- test helpers ------------------------------------------------------------------------------------------------
    def fail(self, endpoint: str, status: int = 500, message: str = "Internal Error - We're working hard to fix this "
             "as soon as possible!", times: int = 1) -> None:
        """The next ``times`` requests to ``endpoint`` (commit, preupload, create, resolve, ...) answer ``status``."""
        with self.lock:
            self.faults.setdefault(endpoint, []).extend([(status, message)] * times)

    def create_repo(self, repo_id: str, owner: str = DEFAULT_USER, private: bool = False,
                    repo_type: str = "model") -> Repo:
        with self.lock:
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, owner=owner, created=_now())
            self._commit(repo, "main", None, "initial commit", "", {".gitattributes": Blob(GITATTRIBUTES)}, owner)
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def rename(self, old: str, new: str, repo_type: str = "model") -> None:
        with self.lock:
            repo = self.repos.pop((repo_type, old))
            repo.repo_id = new
            self.repos[(repo_type, new)] = repo
            self.renamed[(repo_type, old)] = new

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        c = self.repo(repo_id).resolve(revision)
        return {p: b.data for p, b in c.files.items()}

    def commit_count(self, repo_id: str, revision: str = "main") -> int:
        return len(self.repo(repo_id).history(revision))

    def count(self, endpoint: str, method: str | None = None) -> int:
        return sum(1 for m, e, _ in self.requests if e == endpoint and (method is None or m == method))

    # ---- internals -----------------------------------------------------------------------------------------------------
    def _commit(self, repo: Repo, branch: str, parent: str | None, title: str, description: str,
                files: dict[str, Blob], author: str) -> Commit:
        seed = f"{repo.repo_id}\0{parent}\0{title}\0{time.time_ns()}\0{len(repo.commits)}\0" + "\0".join(
            f"{p}:{b.oid}" for p, b in sorted(files.items()))
        oid = hashlib.sha1(seed.encode()).hexdigest()
        c = Commit(oid=oid, parent=parent, title=title, description=description, files=files, author=author, date=_now())
        repo.commits[oid] = c
        repo.branches[branch] = oid
        return c


BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")


def _validate_card_metadata(content: str) -> list[str]:
    """The checks the Hub makes on README.md metadata that matter here; messages name the offending field."""
    if not content.startswith("---"):
        return []
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
    if not m:
        return ['metadata block: the YAML front matter is not closed by "---"']
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as exc:
        return [f"metadata block: invalid YAML ({str(exc).splitlines()[0]})"]
    if not isinstance(meta, dict):
        return ['metadata block: "value" must be of type object']
    errors = []
    lic = meta.get("license")
    for one in (lic if isinstance(lic, list) else [lic] if lic is not None else []):
        if one not in LICENSES:
            errors.append(f'"license" must be one of [{", ".join(sorted(LICENSES))}]')
    if lic == "other" and meta.get("license_link") is not None and not isinstance(meta.get("license_link"), str):
        errors.append('"license_link" must be a string')
    if "pipeline_tag" in meta and meta["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" must be one of [{", ".join(sorted(PIPELINE_TAGS))}]')
    if "library_name" in meta and not isinstance(meta["library_name"], str):
        errors.append('"library_name" must be a string')
    tags = meta.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        errors.append('"tags" must be an array of strings')
    base = meta.get("base_model")
    for i, b in enumerate(base if isinstance(base, list) else [base] if base is not None else []):
        if not isinstance(b, str) or not REPO_ID_RE.match(b):
            where = f'"base_model[{i}]"' if isinstance(base, list) else '"base_model"'
            errors.append(f"{where} is not a valid model id: {b!r}")
    relation = meta.get("base_model_relation")
    if relation is not None:
        if relation not in BASE_MODEL_RELATIONS:
            errors.append(f'"base_model_relation" must be one of [{", ".join(BASE_MODEL_RELATIONS)}]')
        if base is None:
            errors.append('"base_model_relation" needs "base_model"')
    index = meta.get("model-index")
    if index is not None:
        if not isinstance(index, list):
            errors.append('"model-index" must be an array')
        else:
            for i, entry in enumerate(index):
                if not isinstance(entry, dict) or "name" not in entry:
                    errors.append(f'"model-index[{i}].name" is required')
                    continue
                for j, res in enumerate(entry.get("results") or []):
                    where = f"model-index[{i}].results[{j}]"
                    if not isinstance((res.get("task") or {}).get("type"), str):
                        errors.append(f'"{where}.task.type" is required')
                    ds = res.get("dataset") or {}
                    for key in ("type", "name"):
                        if not isinstance(ds.get(key), str):
                            errors.append(f'"{where}.dataset.{key}" is required')
                    for k, metric in enumerate(res.get("metrics") or []):
                        if not isinstance(metric.get("type"), str):
                            errors.append(f'"{where}.metrics[{k}].type" is required')
                        if "value" not in metric or metric["value"] is None:
                            errors.append(f'"{where}.metrics[{k}].value" is required')
    return errors


API_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
ROUTES: list[tuple[str, str, re.Pattern]] = [
    (m, name, re.compile(pat + r"$")) for m, name, pat in [
        ("GET", "whoami", r"/api/whoami-v2"),
        ("POST", "create", r"/api/repos/create"),
        ("POST", "validate-yaml", r"/api/validate-yaml"),
        ("POST", "preupload", API_REPO + r"/preupload/(?P<rev>[^/]+)"),
        ("POST", "commit", API_REPO + r"/commit/(?P<rev>[^/]+)"),
        ("POST", "paths-info", API_REPO + r"/paths-info/(?P<rev>[^/]+)"),
        ("GET", "tree", API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"),
        ("POST", "branch", API_REPO + r"/branch/(?P<branch>[^/]+)"),
        ("GET", "refs", API_REPO + r"/refs"),
        ("GET", "commits", API_REPO + r"/commits/(?P<rev>[^/]+)"),
        ("GET", "info", API_REPO + r"(?:/revision/(?P<rev>[^/]+))?"),
        ("POST", "lfs-batch", r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)\.git/info/lfs/objects/batch"),
        ("PUT", "lfs-upload", r"/_lfs/(?P<oid>[0-9a-f]{64})"),
        ("GET", "cdn", r"/_cdn/(?P<oid>[0-9a-f]{64})"),
        ("GET", "resolve", r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer  # set by HubServer.start

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # ---- plumbing ------------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes | dict | list | None = None, headers: dict | None = None,
              head: bool = False) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        body = body or b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if not any(k.lower() == "content-length" for k in (headers or {})):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and self.command != "HEAD":
            self.wfile.write(body)

    def _user(self, required: bool = False) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if not auth:
            if required:
                raise HubError(401, "You must be authenticated to access this resource")
            return None
        token = auth.split(" ", 1)[1] if " " in auth else auth
        user = self.server_hub.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _dispatch(self, method: str) -> None:
        hub = self.server_hub
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        match_method = "GET" if method == "HEAD" else method
        for m, name, pat in ROUTES:
            mt = pat.match(path)
            if mt and m == match_method:
                break
        else:
            with hub.lock:
                hub.unknown.append((method, self.path))
            body = self._body() if method in ("POST", "PUT") else b""
            del body
            return self._send(404, {"error": f"unknown route {method} {path}"})
        with hub.lock:
            hub.requests.append((method, name, self.path))
            fault = hub.faults.get(name, []).pop(0) if hub.faults.get(name) else None
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            if fault is not None:
                raise HubError(fault[0], fault[1])
            params = {k: (unquote(v) if v is not None else None) for k, v in mt.groupdict().items()}
            getattr(self, "h_" + name.replace("-", "_"))(params, query, body)
        except HubError as exc:
            headers = {"X-Error-Message": exc.message, **exc.headers}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            self._send(exc.status, exc.body or {"error": exc.message}, headers)
        except Exception as exc:  # noqa: BLE001 - a server bug must not hang the client
            self._send(500, {"error": f"hub_server bug: {type(exc).__name__}: {exc}"})

    # ---- repo lookup ---------------------------------------------------------------------------------------------------
    def _repo(self, params: dict, write: bool = False) -> Repo:
        hub = self.server_hub
        rtype = (params.get("type") or "models").rstrip("s")
        repo_id = params["repo"]
        user = self._user(required=write)
        with hub.lock:
            repo = hub.repos.get((rtype, repo_id))
            if repo is None and (rtype, repo_id) in hub.renamed:
                new = hub.renamed[(rtype, repo_id)]
                location = urlsplit(self.path).path.replace(repo_id, new, 1)  # relative, like the Hub
                if urlsplit(self.path).query:
                    location += "?" + urlsplit(self.path).query
                raise HubError(307, "Moved", headers={"Location": location})
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        if write and user != repo.owner:
            raise HubError(403, f"You don't have the rights to create a commit in {repo_id}")
        return repo

    def _rev(self, repo: Repo, rev: str | None) -> Commit:
        c = repo.resolve(rev or "main")
        if c is None:
            raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return c

    def _entry(self, path: str, blob: Blob, c: Commit) -> dict:
        e = {"type": "file", "oid": blob.sha1, "size": len(blob.data), "path": path}
        if blob.lfs:
            e["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
        return e

    # ---- endpoints -----------------------------------------------------------------------------------------------------
    def h_whoami(self, params: dict, query: dict, body: bytes) -> None:
        user = self._user(required=True)
        self._send(200, {"type": "user", "id": hashlib.md5(user.encode()).hexdigest()[:24], "name": user,
                         "fullname": user.title(), "orgs": [], "auth": {"type": "access_token", "accessToken": {
                             "displayName": "test", "role": "write"}}})

    def h_create(self, params: dict, query: dict, body: bytes) -> None:
        hub = self.server_hub
        user = self._user(required=True)
        data = json.loads(body or b"{}")
        ns = data.get("organization") or user
        name = data.get("name") or ""
        rtype = data.get("type") or "model"
        repo_id = f"{ns}/{name}"
        if not REPO_ID_RE.match(repo_id):
            raise HubError(400, f"Invalid repo name {repo_id!r}")
        if ns != user:
            raise HubError(403, f"You don't have the rights to create a repo under {ns}")
        prefix = "" if rtype == "model" else f"{rtype}s/"
        url = f"{hub.url}/{prefix}{repo_id}"
        with hub.lock:
            if (rtype, repo_id) in hub.repos:
                raise HubError(409, f"You already created this {rtype} repo",
                               body={"error": f"You already created this {rtype} repo", "url": url})
            private = data.get("private", data.get("visibility") == "private")
            hub.create_repo(repo_id, owner=user, private=bool(private), repo_type=rtype)
        self._send(200, {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def h_validate_yaml(self, params: dict, query: dict, body: bytes) -> None:
        data = json.loads(body or b"{}")
        errors = _validate_card_metadata(data.get("content") or "")
        if errors:
            raise HubError(400, "Invalid metadata in README.md", body={
                "error": "Invalid metadata in README.md", "errors": [{"message": e} for e in errors], "warnings": []})
        self._send(200, {"errors": [], "warnings": []})

    def h_preupload(self, params: dict, query: dict, body: bytes) -> None:
        repo = self._repo(params, write=True)
        c = self._rev(repo, params["rev"])
        data = json.loads(body or b"{}")
        out = []
        for f in data.get("files", []):
            path, size = f["path"], int(f.get("size") or 0)
            lfs = self.server_hub.upload_mode == "lfs" and size > 0 and (
                path.endswith((".safetensors", ".bin", ".gguf", ".pt")) or size > 10_000_000)
            existing = c.files.get(path)
            oid = None
            if existing is not None and existing.lfs == lfs:
                oid = existing.oid
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": out, "commitOid": c.oid})

    def h_lfs_batch(self, params: dict, query: dict, body: bytes) -> None:
        hub = self.server_hub
        self._repo(params, write=True)
        data = json.loads(body or b"{}")
        objects = []
        for o in data.get("objects", []):
            entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in hub.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{hub.url}/_lfs/{o['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def h_lfs_upload(self, params: dict, query: dict, body: bytes) -> None:
        oid = params["oid"]
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "sha256 of the uploaded content does not match the oid")
        with self.server_hub.lock:
            self.server_hub.lfs_objects[oid] = body
        self._send(200)

    def h_commit(self, params: dict, query: dict, body: bytes) -> None:
        hub = self.server_hub
        repo = self._repo(params, write=True)
        user = self._user(required=True)
        branch = params["rev"]
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        with hub.lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            if header.get("parentCommit") and header["parentCommit"] != head.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for line in lines[1:]:
                key, v = line.get("key"), line.get("value") or {}
                if key == "file":
                    if v.get("encoding") != "base64":
                        raise HubError(400, f"file {v.get('path')}: unsupported encoding {v.get('encoding')!r}")
                    files[v["path"]] = Blob(base64.b64decode(v["content"]))
                elif key == "lfsFile":
                    data = hub.lfs_objects.get(v.get("oid"))
                    if data is None:
                        raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                            f"does not exist. For instance: {v.get('path')}")
                    files[v["path"]] = Blob(data, lfs=True)
                elif key == "deletedFile":
                    if v["path"] not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {v['path']}", code="EntryNotFound")
                    del files[v["path"]]
                elif key == "deletedFolder":
                    prefix = v["path"].rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            c = hub._commit(repo, branch, head.oid, header.get("summary") or "", header.get("description") or "",
                            files, user)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._send(200, {"success": True, "commitOid": c.oid, "commitUrl": f"{hub.url}/{prefix}{repo.repo_id}/commit/{c.oid}",
                         "hookOutput": ""})

    def h_info(self, params: dict, query: dict, body: bytes) -> None:
        repo = self._repo(params)
        c = self._rev(repo, params.get("rev"))
        card = {}
        readme = c.files.get("README.md")
        if readme is not None:
            m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.data.decode("utf-8", "replace"), re.S)
            if m:
                try:
                    card = yaml.safe_load(m.group(1)) or {}
                except yaml.YAMLError:
                    card = {}
        config = None
        if "config.json" in c.files:
            try:
                cfg = json.loads(c.files["config.json"].data)
                config = {k: cfg[k] for k in ("architectures", "model_type", "auto_map") if k in cfg}
            except ValueError:
                config = None
        info = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": c.oid, "lastModified": c.date, "createdAt": repo.created,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": list(card.get("tags") or []), "pipeline_tag": card.get("pipeline_tag"),
            "library_name": card.get("library_name"), "cardData": card or None, "config": config,
            "siblings": [{"rfilename": p} for p in sorted(c.files)],
        }
        if repo.repo_type != "model":
            info.pop("modelId")
            info.pop("pipeline_tag")
            info.pop("library_name")
            info.pop("config")
        self._send(200, info)

    def h_tree(self, params: dict, query: dict, body: bytes) -> None:
        repo = self._repo(params)
        c = self._rev(repo, params["rev"])
        base = (params.get("path") or "").strip("/")
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        prefix = base + "/" if base else ""
        if base and base not in c.files and not any(p.startswith(prefix) for p in c.files):
            raise HubError(404, f"{base} does not exist on {params['rev']}", code="EntryNotFound",
                           headers={"X-Repo-Commit": c.oid})
        out, dirs = [], set()
        for p in sorted(c.files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest:
                parts = rest.split("/")
                for i in range(1, len(parts) if recursive else 2):
                    dirs.add(prefix + "/".join(parts[:i]))
                if not recursive:
                    continue
            out.append(self._entry(p, c.files[p], c))
        out += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                for d in sorted(dirs)]
        self._send(200, out)

    def h_paths_info(self, params: dict, query: dict, body: bytes) -> None:
        repo = self._repo(params)
        c = self._rev(repo, params["rev"])
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in c.files:
                out.append(self._entry(p, c.files[p], c))
            elif any(f.startswith(p + "/") for f in c.files):
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
        self._send(200, out)

    def h_branch(self, params: dict, query: dict, body: bytes) -> None:
        hub = self.server_hub
        repo = self._repo(params, write=True)
        data = json.loads(body or b"{}")
        start = self._rev(repo, data.get("startingPoint") or "main")
        with hub.lock:
            if params["branch"] in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{params['branch']}")
            repo.branches[params["branch"]] = start.oid
        self._send(200, {})

    def h_refs(self, params: dict, query: dict, body: bytes) -> None:
        repo = self._repo(params)
        self._send(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                                      for b, oid in sorted(repo.branches.items())], "converts": [], "tags": []})

    def h_commits(self, params: dict, query: dict, body: bytes) -> None:
        repo = self._repo(params)
        self._rev(repo, params["rev"])
        self._send(200, [{"id": c.oid, "title": c.title, "message": c.description, "date": c.date,
                          "authors": [{"user": c.author}]} for c in repo.history(params["rev"])])

    def h_resolve(self, params: dict, query: dict, body: bytes) -> None:
        hub = self.server_hub
        repo = self._repo(params)
        c = self._rev(repo, params["rev"])
        path = params["path"]
        blob = c.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": c.oid})
        headers = {"X-Repo-Commit": c.oid, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if blob.lfs:  # like the Hub: redirect LFS files to the CDN, carrying their metadata on the redirect itself
            headers.update({"Location": f"{hub.cdn_url}/_cdn/{blob.sha256}", "X-Linked-Etag": f'"{blob.sha256}"',
                            "X-Linked-Size": str(len(blob.data))})
            return self._send(302, b"", headers)
        self._send_bytes(blob.data, headers)

    def h_cdn(self, params: dict, query: dict, body: bytes) -> None:
        if self.headers.get("Authorization"):
            raise HubError(400, "the CDN must not receive the Hub token")
        data = self.server_hub.lfs_objects.get(params["oid"])
        if data is None:
            raise HubError(404, "no such object")
        self._send_bytes(data, {"ETag": f'"{params["oid"]}"', "Accept-Ranges": "bytes",
                                "Content-Type": "application/octet-stream"})

    def _send_bytes(self, data: bytes, headers: dict) -> None:
        rng = self.headers.get("Range")
        m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            part = data[start:end + 1]
            headers = {**headers, "Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(data)}"}
            return self._send(206, part, headers)
        self._send(200, data, headers)


def main() -> None:  # pragma: no cover - manual use
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=DEFAULT_TOKEN)
    p.add_argument("--user", default=DEFAULT_USER)
    p.add_argument("--upload-mode", choices=["regular", "lfs"], default="regular")
    p.add_argument("--lifetime", type=float, default=3600)
    a = p.parse_args()
    hub = HubServer(a.host, a.port, {a.token: a.user}, upload_mode=a.upload_mode, lifetime=a.lifetime).start()
    print(f"HF_ENDPOINT={hub.url} HF_TOKEN={a.token}", flush=True)
    try:
        while hub._httpd is not None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":  # pragma: no cover
    main()


def client_env(hub: HubServer, hf_home: str, token: str | None = DEFAULT_TOKEN, **extra: str) -> dict[str, str]:
    """Environment for a fresh client process pointed at ``hub``: HF_ENDPOINT (read by huggingface_hub at import
    time), an empty HF_HOME cache, a token (or none), no telemetry, no proxy for loopback."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "NO_PROXY": "127.0.0.1,localhost", "TOKENIZERS_PARALLELISM": "false"})
    if token:
        env["HF_TOKEN"] = token
    env.update(extra)
    return env
