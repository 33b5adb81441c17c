"""A small Hugging Face Hub-compatible HTTP server for tests (stdlib only: http.server + threading).

It lets tests run the real ``push_to_hub`` / ``from_pretrained("org/name")`` code of transformers, peft and
huggingface_hub (2.4.0) over HTTP on 127.0.0.1, with repos stored under a local folder:

    <storage>/<type>s/<org>/<name>/refs/<quoted branch>      commit sha the branch points to
    <storage>/<type>s/<org>/<name>/commits/<sha>/meta.json   parent, summary, number
    <storage>/<type>s/<org>/<name>/commits/<sha>/tree/...    full snapshot of the files at that commit

Implemented (what huggingface_hub 2.4.0 calls for a push and a load):
  POST /api/repos/create                      -> repo with an initial commit holding .gitattributes (like the Hub)
  GET  /api/whoami-v2, POST /api/validate-yaml (accepts any README metadata)
  GET  /api/{type}s/{repo}[/revision/{rev}]   -> repo info: id, sha, siblings
  GET  /api/{type}s/{repo}/tree/{rev}[/{path}] (?recursive=), POST /api/{type}s/{repo}/paths-info/{rev}
  POST /api/{type}s/{repo}/preupload/{rev}    -> "regular" for every file, so contents come inline in the commit
  POST /api/{type}s/{repo}/commit/{rev}       -> NDJSON header / file (base64) / deletedFile / deletedFolder lines
  POST /api/{type}s/{repo}/branch/{branch}    (used by push_to_hub(revision=...))
  GET/HEAD /[{type}s/]{repo}/resolve/{rev}/{path} with X-Repo-Commit, ETag (git blob oid), Content-Length
Every commit gets a new sha (sha1 of parent, number, message and tree: deterministic); branches point to the
newest and any older sha stays resolvable. Errors carry the X-Error-Code headers (RepoNotFound,
RevisionNotFound, EntryNotFound) that huggingface_hub turns into its typed exceptions. Any token is accepted.

Not implemented: LFS and Xet uploads (huggingface_hub 2.4.0 honours "regular" for any size, so they are never
needed; an "lfsFile" commit line gets a 400), pull requests (create_pr), Range requests, pagination, repo
deletion, tags, private/gated repos, real YAML validation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

_REPO = r"/api/(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"
_ROUTES = [  # (method, regex, handler name); {rev} is one URL segment, slashes inside it are quoted as %2F
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", _REPO + r"(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("GET", _REPO + r"/tree/(?P<rev>[^/]+)(?P<path>/.*)?", "tree"),
    ("POST", _REPO + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("POST", _REPO + r"/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", _REPO + r"/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", _REPO + r"/branch/(?P<rev>[^/]+)", "create_branch"),
    ("GET", r"(?:/(?P<type>dataset|space)s)?/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


def git_oid(data: bytes) -> str:
    """The git blob sha1 (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None, **body):
        super().__init__(message)
        self.status, self.code, self.message, self.commit, self.body = status, code, message, commit, body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server: "LocalHubServer._Server"

    def log_message(self, *args):  # quiet; requests are recorded in hub.requests instead
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("GET")  # reply() drops the body

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.body = self._read_body()
        self.server.hub.requests.append((self.command, url.path))
        try:
            for m, pattern, name in _ROUTES:
                match = re.fullmatch(pattern, url.path)
                if m == method and match:
                    kw = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    return getattr(self.server.hub, "_api_" + name)(self, **kw)
            self.server.hub.unrouted.append((self.command, url.path))
            raise HubError(404, None, f"no route for {self.command} {url.path}")
        except HubError as e:
            headers = {"X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            self.reply({"error": e.message, **e.body}, status=e.status, headers=headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, payload, status: int = 200, headers: dict | None = None, content_type="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class LocalHubServer:
    """``with LocalHubServer(storage_dir) as hub: hub.endpoint`` -> "http://127.0.0.1:PORT" (daemon thread)."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        hub: "LocalHubServer"

    def __init__(self, storage_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(storage_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.unrouted: list[tuple[str, str]] = []  # requests this server does not implement (answered 404)
        self._lock = threading.Lock()
        self._httpd = self._Server((host, port), _Handler)
        self._httpd.hub = self
        self.endpoint = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True, name="local-hub")

    def start(self) -> "LocalHubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- storage -----------------------------------------------------------------------------------------
    def repo_dir(self, repo: str, type: str = "model") -> Path:
        return self.root / f"{type}s" / repo

    def _resolve(self, repo: str, type: str, rev: str) -> tuple[Path, str]:
        """Revision (branch name or full commit sha) -> (snapshot folder, sha)."""
        rdir = self.repo_dir(repo, type)
        if not rdir.is_dir():
            raise HubError(404, "RepoNotFound", "Repository not found")
        ref = rdir / "refs" / quote(rev, safe="")
        sha = ref.read_text() if ref.is_file() else rev
        if not re.fullmatch(r"[0-9a-f]{40}", sha) or not (rdir / "commits" / sha).is_dir():
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return rdir / "commits" / sha / "tree", sha

    def _commit(self, repo: str, type: str, branch: str, summary: str, ops: list[tuple[str, str, bytes]]) -> str:
        """Apply ("add"|"delete_file"|"delete_folder", path, data) ops on top of `branch`; return the new sha."""
        rdir = self.repo_dir(repo, type)
        with self._lock:
            parent, number = None, 0
            if (rdir / "refs").is_dir():
                tree, parent = self._resolve(repo, type, branch)
                number = json.loads((tree.parent / "meta.json").read_text())["number"] + 1
            staging = rdir / "commits" / f".staging-{threading.get_ident()}"
            try:
                shutil.rmtree(staging, ignore_errors=True)
                if parent:
                    shutil.copytree(tree, staging / "tree")
                (staging / "tree").mkdir(parents=True, exist_ok=True)
                for kind, path, data in ops:
                    target = staging / "tree" / _safe_path(path)
                    if kind == "add":
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(data)
                    elif kind == "delete_folder" and target.is_dir():
                        shutil.rmtree(target)
                    elif kind == "delete_file" and target.is_file():
                        target.unlink()
                    else:
                        raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                files = _files(staging / "tree")
                listing = "".join(f"{p}:{git_oid((staging / 'tree' / p).read_bytes())}\n" for p in files)
                sha = hashlib.sha1(f"{parent}\n{number}\n{summary}\n{listing}".encode()).hexdigest()
                (staging / "meta.json").write_text(json.dumps({"parent": parent, "number": number, "summary": summary}))
                if not (rdir / "commits" / sha).exists():
                    staging.rename(rdir / "commits" / sha)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            (rdir / "refs").mkdir(exist_ok=True)
            (rdir / "refs" / quote(branch, safe="")).write_text(sha)
            return sha

    def _entry(self, tree: Path, path: str) -> dict:
        full = tree / path
        if full.is_dir():
            return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0}
        data = full.read_bytes()
        return {"type": "file", "path": path, "oid": git_oid(data), "size": len(data)}

    # ---- API handlers ------------------------------------------------------------------------------------
    def _api_whoami(self, h):
        h.reply({"type": "user", "name": "user", "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def _api_validate_yaml(self, h):
        h.reply({"errors": [], "warnings": []})

    def _api_create_repo(self, h):
        body = json.loads(h.body)
        type_ = body.get("type") or "model"
        repo = f"{body.get('organization') or 'user'}/{body['name']}"
        url = f"{self.endpoint}/{'' if type_ == 'model' else type_ + 's/'}{repo}"
        if self.repo_dir(repo, type_).is_dir():  # exist_ok=True reads "url" from this 409 body
            raise HubError(409, None, f"You already created this {type_} repo", url=url)
        self._commit(repo, type_, "main", "initial commit", [("add", ".gitattributes", b"*.safetensors filter=lfs\n")])
        h.reply({"url": url, "name": repo, "id": repo})

    def _api_repo_info(self, h, type, repo, rev="main"):
        tree, sha = self._resolve(repo, type, rev)
        siblings = [{"rfilename": p, "size": (tree / p).stat().st_size} for p in _files(tree)]
        h.reply(
            {
                "id": repo,
                "author": repo.split("/")[0],
                "sha": sha,
                "private": False,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": siblings,
                "lastModified": "2026-01-01T00:00:00.000Z",
            }
        )

    def _api_tree(self, h, type, repo, rev, path=""):
        tree, _ = self._resolve(repo, type, rev)
        base = path.strip("/")
        if base and not (tree / _safe_path(base)).is_dir():
            raise HubError(404, "EntryNotFound", f"{base} does not exist")
        recursive = h.query.get("recursive", "false").lower() in ("1", "true")
        paths = sorted(
            str(p.relative_to(tree).as_posix())
            for p in ((tree / base).rglob("*") if recursive else (tree / base).iterdir())
        )
        h.reply([self._entry(tree, p) for p in paths])

    def _api_paths_info(self, h, type, repo, rev):
        tree, _ = self._resolve(repo, type, rev)
        paths = parse_qs(h.body.decode()).get("paths", [])
        h.reply([self._entry(tree, p) for p in paths if p and (tree / _safe_path(p)).exists()])

    def _api_preupload(self, h, type, repo, rev):
        tree, sha = self._resolve(repo, type, rev)
        files = []
        for f in json.loads(h.body)["files"]:
            existing = tree / _safe_path(f["path"])
            oid = git_oid(existing.read_bytes()) if existing.is_file() else None
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        h.reply({"files": files, "commitOid": sha})

    def _api_commit(self, h, type, repo, rev):
        if h.query.get("create_pr"):
            raise HubError(400, None, "create_pr is not supported by the local hub")
        _, head = self._resolve(repo, type, rev)
        if not (self.repo_dir(repo, type) / "refs" / quote(rev, safe="")).is_file():
            raise HubError(400, None, f"Can only commit to a branch, not to {rev}")
        summary, ops = "", []
        for line in filter(None, h.body.decode().splitlines()):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                if value.get("parentCommit") not in (None, head):
                    raise HubError(412, None, "parentCommit is not the head of the branch")
            elif key == "file":
                ops.append(("add", value["path"], base64.b64decode(value["content"])))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append(("delete_file" if key == "deletedFile" else "delete_folder", value["path"].rstrip("/"), b""))
            else:
                raise HubError(400, None, f"commit line {key!r} is not supported (LFS/Xet are not implemented)")
        sha = self._commit(repo, type, rev, summary, ops)
        prefix = "" if type == "model" else f"{type}s/"
        h.reply(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.endpoint}/{prefix}{repo}/commit/{sha}",
                "pullRequestUrl": None,
            }
        )

    def _api_create_branch(self, h, type, repo, rev):
        ref = self.repo_dir(repo, type) / "refs" / quote(rev, safe="")
        start = json.loads(h.body or b"{}").get("startingPoint") or "main"
        if ref.is_file():
            raise HubError(409, None, "Reference already exists")
        ref.write_text(self._resolve(repo, type, start)[1])
        h.reply({})

    def _api_resolve(self, h, repo, rev, path, type="model"):
        tree, sha = self._resolve(repo, type, rev)
        full = tree / _safe_path(path)
        if not full.is_file():
            raise HubError(404, "EntryNotFound", "Entry not found", commit=sha)
        data = full.read_bytes()
        h.reply(
            data,
            content_type="application/octet-stream",
            headers={"X-Repo-Commit": sha, "ETag": f'"{git_oid(data)}"', "Accept-Ranges": "none"},
        )


def _safe_path(path: str) -> str:
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise HubError(400, None, f"invalid path in repo: {path!r}")
    return path


def _files(tree: Path) -> list[str]:
    return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())


def hub_env(endpoint: str, home: str | os.PathLike) -> dict[str, str]:
    """Environment for a process that should talk to `endpoint` with a fresh HF_HOME (for subprocess.run(env=...))."""
    home = Path(home)
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_MODULES_CACHE": str(home / "modules"),
        "HF_TOKEN": "hf_local_hub_dummy_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def local_hub(tmp_path, monkeypatch):
    """Generator behind a pytest fixture: ``yield from local_hub(tmp_path, monkeypatch)``.

    Starts a LocalHubServer storing under tmp_path/"hub-storage" and points Hugging Face at it, undone by monkeypatch:
    1. os.environ (monkeypatch.setenv, see hub_env): what a subprocess started by the test sees, read fresh at its
       import; this is the honest path and the one to use for trust_remote_code loads.
    2. in this process: huggingface_hub reads HF_ENDPOINT/HF_HOME/HF_HUB_OFFLINE once at import into
       `huggingface_hub.constants`, and two HfApi objects cache the endpoint when built (`huggingface_hub.hf_api.api`,
       behind the module-level `file_exists`/`model_info`/..., and transformers' shared `transformers.utils.hub._hf_api`),
       so those constants and objects are patched too.
    Not patched in-process: transformers' HF_MODULES_CACHE (remote code keeps the process-wide module cache).
    """
    from huggingface_hub import constants, hf_api

    hub = LocalHubServer(tmp_path / "hub-storage").start()
    home = tmp_path / "hf-home"
    env = hub_env(hub.endpoint, home)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    patches = {
        "ENDPOINT": hub.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": env["HF_HOME"],
        "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HUGGINGFACE_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": env["HF_XET_CACHE"],
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)
    try:
        import transformers.utils.hub as tf_hub

        monkeypatch.setattr(tf_hub, "_hf_api", None)  # rebuilt on first use, with the patched endpoint
    except ImportError:
        pass
    try:
        yield hub
    finally:
        hub.stop()


def main(argv=None):
    """`python tests/hub_server.py`: serves a local Hub until Ctrl-C and prints the environment that points
    huggingface_hub, transformers and peft at it (push, then from_pretrained by repo id, all offline)."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--storage", type=Path, default=Path.home() / ".cache" / "worldvla" / "local-hub", help="folder holding the repos")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    parser.add_argument("--client-home", type=Path, default=None, help="HF_HOME of the printed environment; default: <storage>/client-home")
    args = parser.parse_args(argv)
    hub = LocalHubServer(args.storage, args.host, args.port).start()
    print(f"local Hub serving {args.storage} at {hub.endpoint}; in another shell:\n")
    for key, value in hub_env(hub.endpoint, args.client_home or args.storage / "client-home").items():
        print(f"export {key}={value}")
    print("\nCtrl-C stops it.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
