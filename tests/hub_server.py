"""A small Hugging Face Hub on 127.0.0.1 for push tests, speaking the endpoints the real huggingface_hub client
uses (see /work/shared/notes/local-hub.md): whoami-v2, repos/create, repo info, validate-yaml, preupload, NDJSON
commit, tree, paths-info, resolve (HEAD/GET), LFS batch + PUT, for models and Spaces (kept as "spaces/ns/name"). Written from the client's requests, not from the
Hub's code. Files live in memory; every commit is recorded so tests can count commits and see what each sent."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    owner: str
    private: bool
    files: dict = field(default_factory=dict)      # path -> bytes
    lfs: set = field(default_factory=set)          # paths stored as LFS
    commits: list = field(default_factory=list)    # [{"oid", "summary", "paths"}]
    snapshots: dict = field(default_factory=dict)  # commit oid -> (files, lfs)
    sdk: str | None = None                         # a Space's SDK ("gradio")

    def commit(self, summary: str, paths: list[str]) -> str:
        oid = hashlib.sha1(f"{len(self.commits)}:{summary}:{sorted(paths)}".encode()).hexdigest()
        self.commits.append({"oid": oid, "summary": summary, "paths": sorted(paths)})
        self.snapshots[oid] = (dict(self.files), set(self.lfs))
        return oid

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"]


class LocalHub:
    """`with LocalHub(port, tokens={"tok": "me"}) as hub:`; hub.url is the HF_ENDPOINT."""

    def __init__(self, port: int = 0, tokens: dict | None = None, lfs_threshold: int | None = None):
        self.tokens = tokens or {}
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lfs_threshold = lfs_threshold   # None: every file "regular" (works with xet on); else bigger -> "lfs"
        self.log: list[tuple[str, str]] = []
        # callable(method, path) -> None, True or "drop" (no response), "mid-body" (drop while the body is being
        # sent), "stall" (read the request, then send nothing for `stall` seconds), "stall-after" (carry the
        # request out, then withhold the answer as long), or an HTTP status such as 500 or 429 (with Retry-After):
        # network faults for the push tests
        self.fail = None
        self.stall = 30.0
        self.unstall = threading.Event()   # set: stalled handlers give up at once (hub closing)
        self.lock = threading.Lock()
        self.connections: set = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.unstall.set()
        self.server.shutdown()
        self.server.server_close()
        # huggingface_hub pools HTTP/1.1 connections: close the open ones, or a later LocalHub on the same port
        # would see this hub's handler threads answer its requests (with this hub's tokens and repos)
        with self.lock:
            conns, self.connections = list(self.connections), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"


def _handler(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def setup(self):   # remember the connection: a closed hub must not keep serving a pooled keep-alive one
            super().setup()
            with hub.lock:
                hub.connections.add(self.connection)

        def finish(self):
            super().finish()
            with hub.lock:
                hub.connections.discard(self.connection)

        # ---- plumbing
        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, code: int, body=b"", headers=None, head=False):
            if getattr(self, "withhold", False):
                return
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _user(self):
            auth = self.headers.get("Authorization", "")
            return hub.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

        def _repo(self, repo_id: str, write=False):
            repo = hub.repos.get(repo_id)
            user = self._user()
            if repo is None or (repo.private and user != repo.owner) or (write and user != repo.owner):
                code = 401 if user is None else 404
                self._send(code, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return None
            return repo

        def _dispatch(self, method: str):
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.log.append((method, path))
            self.withhold = False
            fault = hub.fail(method, path) if hub.fail is not None else None
            if fault == "mid-body":   # the connection drops while the client is still sending the body
                self.rfile.read(int(self.headers.get("Content-Length") or 0) // 2)
                return self._drop()
            body = self._body() if method in ("POST", "PUT") else b""
            if fault is True or fault == "drop":
                return self._drop()
            if fault == "stall":   # accepted, then silence past the client's timeout
                hub.unstall.wait(hub.stall)
                return self._drop()
            self.withhold = fault == "stall-after"
            if isinstance(fault, int) and not isinstance(fault, bool):   # an HTTP error status
                self.close_connection = True
                return self._send(fault, {"error": f"injected HTTP {fault}"},
                                  {"Retry-After": "1"} if fault == 429 else None)
            with hub.lock:
                for pattern, fn in ROUTES:
                    m = re.fullmatch(pattern, f"{method} {path}")
                    if m:
                        fn(self, m, body, parse_qs(url.query))
                        break
                else:
                    self._send(404, {"error": f"no route {method} {path}"})
            if self.withhold:   # done (a commit made), but the answer never comes: waited for outside the lock
                hub.unstall.wait(hub.stall)
                self._drop()

        def _drop(self):
            """No response: what a dropped network looks like to the client."""
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(2)
            except OSError:   # the client (or the closing hub) has closed it already
                pass

        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        # ---- endpoints
        def whoami(self, m, body, q):
            user = self._user()
            if user is None:
                return self._send(401, {"error": "Invalid credentials in Authorization header"})
            self._send(200, {"type": "user", "name": user, "orgs": [],
                             "auth": {"type": "access_token", "accessToken": {"displayName": "t", "role": "write"}}})

        def create(self, m, body, q):
            user = self._user()
            if user is None:
                return self._send(401, {"error": "Invalid credentials"})
            req = json.loads(body)
            repo_id = f"{req.get('organization') or user}/{req['name']}"
            key = f"spaces/{repo_id}" if req.get("type") == "space" else repo_id
            url = f"{hub.url}/{key}"
            if key in hub.repos:
                return self._send(409, {"error": "You already created this repo", "url": url})
            repo = hub.repos[key] = Repo(owner=user, private=req.get("visibility") == "private"
                                         or bool(req.get("private")), sdk=req.get("sdk"))
            repo.files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            repo.commit("initial commit", [".gitattributes"])
            self._send(200, {"url": url, "name": repo_id})

        def info(self, m, body, q):
            repo = self._repo(self._key(m))
            if repo is None:
                return
            files, _ = self._snapshot(repo, m["rev"] or "main")
            self._send(200, {"id": f"{m['ns']}/{m['name']}", "sha": self._rev_sha(repo, m["rev"] or "main"),
                             "private": repo.private, "siblings": [{"rfilename": p} for p in sorted(files)],
                             "tags": [], "downloads": 0, "likes": 0, **({"sdk": repo.sdk} if repo.sdk else {})})

        def validate_yaml(self, m, body, q):
            content = json.loads(body)["content"]   # the whole README.md; check its front matter
            m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
            try:
                meta = yaml.safe_load(m[1]) if m else {}
            except yaml.YAMLError as e:
                return self._send(400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []})
            if not isinstance(meta, dict):
                return self._send(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
            self._send(200, {"errors": [], "warnings": []})

        def preupload(self, m, body, q):
            repo = self._repo(self._key(m), write=True)
            if repo is None:
                return
            out = []
            for f in json.loads(body)["files"]:
                lfs = hub.lfs_threshold is not None and f["size"] > hub.lfs_threshold
                old = repo.files.get(f["path"])
                oid = None if old is None else self._oid(repo, f["path"])
                out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": oid})
            self._send(200, {"files": out})

        def commit(self, m, body, q):
            repo = self._repo(self._key(m), write=True)
            if repo is None:
                return
            lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            new, lfs, paths = dict(repo.files), set(repo.lfs), []
            for op in lines:
                v = op["value"]
                if op["key"] == "file":
                    new[v["path"]] = base64.b64decode(v["content"])
                    lfs.discard(v["path"])
                elif op["key"] == "lfsFile":
                    if v["oid"] not in hub.lfs_objects:
                        return self._send(422, {"error": f"LFS object {v['oid']} was not uploaded"})
                    new[v["path"]] = hub.lfs_objects[v["oid"]]
                    lfs.add(v["path"])
                elif op["key"] == "deletedFile":
                    new.pop(v["path"], None)
                    lfs.discard(v["path"])
                else:
                    continue
                paths.append(v["path"])
            repo.files, repo.lfs = new, lfs
            oid = repo.commit(header["summary"], paths)
            self._send(200, {"commitUrl": f"{hub.url}/{m['ns']}/{m['name']}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": None})

        def tree(self, m, body, q):
            repo = self._repo(self._key(m))
            if repo is None:
                return
            files, lfs = self._snapshot(repo, m["rev"])
            prefix = (m["path"] or "").strip("/")
            self._send(200, [self._entry(p, files[p], p in lfs) for p in sorted(files)
                             if not prefix or p.startswith(prefix + "/")])

        def paths_info(self, m, body, q):
            repo = self._repo(self._key(m))
            if repo is None:
                return
            files, lfs = self._snapshot(repo, m["rev"])
            paths = parse_qs(body.decode()).get("paths", [])
            self._send(200, [self._entry(p, files[p], p in lfs) for p in paths if p in files])

        def resolve(self, m, body, q):
            repo = self._repo(self._key(m))
            if repo is None:
                return
            head = self.command == "HEAD"
            files, lfs = self._snapshot(repo, m["rev"])
            if m["path"] not in files:
                return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, head)
            data = files[m["path"]]
            etag = hashlib.sha256(data).hexdigest() if m["path"] in lfs else git_blob_sha1(data)
            self._send(200, data, {"X-Repo-Commit": self._rev_sha(repo, m["rev"]), "ETag": f'"{etag}"',
                                   "Content-Type": "application/octet-stream"}, head)

        def lfs_batch(self, m, body, q):
            objects = []
            for o in json.loads(body)["objects"]:
                entry = {"oid": o["oid"], "size": o["size"]}
                if o["oid"] not in hub.lfs_objects:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/_lfs/{o['oid']}"}}
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

        def lfs_put(self, m, body, q):  # arrives without Authorization: the URL counts as pre-signed
            if hashlib.sha256(body).hexdigest() != m["oid"]:
                return self._send(400, {"error": "sha256 mismatch"})
            hub.lfs_objects[m["oid"]] = body
            self._send(200, b"")

        # ---- helpers
        def _key(self, m) -> str:
            repo_id = f"{m['ns']}/{m['name']}"
            return f"spaces/{repo_id}" if m.groupdict().get("t") == "spaces" else repo_id

        def _snapshot(self, repo: Repo, rev: str):
            return (repo.files, repo.lfs) if rev == "main" else repo.snapshots.get(rev, ({}, set()))

        def _rev_sha(self, repo: Repo, rev: str) -> str:
            return repo.sha if rev == "main" else rev

        def _oid(self, repo: Repo, path: str) -> str:
            data = repo.files[path]
            return hashlib.sha256(data).hexdigest() if path in repo.lfs else git_blob_sha1(data)

        def _entry(self, path: str, data: bytes, lfs: bool) -> dict:
            e = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
            if lfs:
                e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            return e

    ROUTES = [
        (r"GET /api/whoami-v2", Handler.whoami),
        (r"POST /api/repos/create", Handler.create),
        (r"POST /api/validate-yaml", Handler.validate_yaml),
        (rf"GET /api/(?P<t>models|spaces)/{_REPO}(?:/revision/(?P<rev>[^/]+))?", Handler.info),
        (rf"POST /api/(?P<t>models|spaces)/{_REPO}/preupload/(?P<rev>[^/]+)", Handler.preupload),
        (rf"POST /api/(?P<t>models|spaces)/{_REPO}/commit/(?P<rev>[^/]+)", Handler.commit),
        (rf"GET /api/(?P<t>models|spaces)/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?", Handler.tree),
        (rf"POST /api/(?P<t>models|spaces)/{_REPO}/paths-info/(?P<rev>[^/]+)", Handler.paths_info),
        (rf"(?:GET|HEAD) /(?:(?P<t>spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", Handler.resolve),
        (rf"POST /{_REPO}\.git/info/lfs/objects/batch", Handler.lfs_batch),
        (r"PUT /_lfs/(?P<oid>[0-9a-f]{64})", Handler.lfs_put),
    ]
    return Handler


def online(hub: LocalHub, monkeypatch, tmp_path, token: str) -> LocalHub:
    """A test's view of the shared local Hub: online (conftest keeps every other test offline), `token` in
    HF_TOKEN, its own download cache, and no repos, objects, log or fault left from an earlier test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    hub.repos.clear()
    hub.lfs_objects.clear()
    hub.log.clear()
    hub.fail = None
    hub.lfs_threshold = None
    hub.stall = 30.0
    return hub
