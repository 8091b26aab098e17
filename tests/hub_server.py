"""A small Hugging Face Hub-compatible HTTP server for the tests, run in a thread of the test process.

It speaks the part of the Hub API that `huggingface_hub` 2.4 and `datasets` 5.2 use to push and pull a repo: create a
repo, `whoami`, preupload (which files go through LFS), the LFS batch API with "basic" uploads, commits, repo info,
file listing (`tree`, `paths-info`) and file download (`resolve`, with ranges). Everything lives in memory and goes
when the server stops. Writes need any bearer token (like the Hub, a request without one gets 401); there are no
pull requests, tags or pagination.

    server = HubServer()          # listens on a free port of 127.0.0.1
    server.endpoint               # "http://127.0.0.1:PORT", for HF_ENDPOINT
    server.stop()
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

_KIND = r"(?P<kind>models|datasets|spaces)"
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_LFS_SUFFIXES = (".parquet", ".arrow", ".safetensors", ".bin", ".gguf", ".pt")


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    sha256: str
    size: int
    lfs: bool

    def oid(self, blobs: dict[str, bytes]) -> str:
        return _git_oid(_lfs_pointer(self.sha256, self.size) if self.lfs else blobs[self.sha256])

    def entry(self, path: str, blobs: dict[str, bytes]) -> dict:
        entry = {"type": "file", "oid": self.oid(blobs), "size": self.size, "path": path}
        if self.lfs:
            entry["lfs"] = {
                "oid": self.sha256,
                "size": self.size,
                "pointerSize": len(_lfs_pointer(self.sha256, self.size)),
            }
        return entry


@dataclass
class Repo:
    private: bool = False
    commits: list[tuple[str, str, dict[str, StoredFile]]] = field(default_factory=list)  # (oid, title, files)

    def head(self, revision: str) -> tuple[str, str, dict[str, StoredFile]] | None:
        revision = unquote(revision or "main")
        if revision == "main":
            return self.commits[-1]
        return next((c for c in self.commits if c[0].startswith(revision) and len(revision) >= 7), None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    # ---- plumbing ----

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return b""
        chunks = b""
        while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
            chunks += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return chunks

    def _send(self, status: int, payload=None, raw: bytes | None = None, headers=None, head=False, ctype=None):
        data = raw if raw is not None else b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header(
            "Content-Type", ctype or ("application/octet-stream" if raw is not None else "application/json")
        )
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None, head=False):
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
        self._send(status, {"error": message}, headers=headers, head=head)

    def _authorised(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        with self.server.lock:
            for pattern, methods, handler in self.ROUTES:
                match = re.fullmatch(pattern, path)
                if match and method in methods:
                    return handler(self, match, query, method)
        # A HEAD response has no body; writing one would corrupt the next response on a kept-alive connection
        # (TRL's telemetry sends HEAD /api/telemetry/... from a thread while the push runs).
        self._error(404, f"hub_server: no route for {method} {path}", head=method == "HEAD")

    def _repo(self, match, head=False) -> Repo | None:
        kind = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}[
            match.groupdict().get("kind")
        ]
        repo = self.server.repos.get((kind, match.group("repo")))
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound", head=head)
        return repo

    # ---- handlers ----

    def whoami(self, match, query, method):
        if not self._authorised():
            return self._error(401, "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": "tester", "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def validate_yaml(self, match, query, method):
        self._body()
        self._send(200, {"errors": [], "warnings": []})

    def create_repo(self, match, query, method):
        request = json.loads(self._body() or b"{}")
        if not self._authorised():
            return self._error(401, "Invalid username or password.")
        kind = request.get("type") or "model"
        repo_id = f"{request.get('organization') or 'tester'}/{request['name']}"
        url = f"{self._base()}/{'' if kind == 'model' else kind + 's/'}{repo_id}"
        if (kind, repo_id) in self.server.repos:
            return self._send(409, {"error": "You already created this repo", "url": url},
                              headers={"X-Error-Message": "You already created this repo"})  # fmt: skip
        self.server.repos[(kind, repo_id)] = Repo(
            private=bool(request.get("private")), commits=[(hashlib.sha1(repo_id.encode()).hexdigest(), "init", {})]
        )
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def repo_info(self, match, query, method):
        repo = self._repo(match)
        if repo is None:
            return
        commit = repo.head(match.groupdict().get("rev") or "main")
        if commit is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        oid, _, files = commit
        siblings = [{"rfilename": path, "size": stored.size} for path, stored in sorted(files.items())]
        self._send(200, {"id": match.group("repo"), "sha": oid, "private": repo.private, "siblings": siblings,
                         "tags": [], "cardData": {}, "lastModified": "2026-01-01T00:00:00.000Z"})  # fmt: skip

    def preupload(self, match, query, method):
        repo = self._repo(match)
        if repo is None:
            return
        files = []
        for file in json.loads(self._body() or b"{}").get("files", []):
            sample = base64.b64decode(file.get("sample") or "")
            lfs = b"\0" in sample or file["path"].endswith(_LFS_SUFFIXES)
            files.append({"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        self._send(200, {"files": files, "commitOid": repo.head("main")[0]})

    def lfs_batch(self, match, query, method):
        request = json.loads(self._body() or b"{}")
        objects = []
        for item in request.get("objects", []):
            entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if request.get("operation") == "upload" and item["oid"] not in self.server.blobs:
                entry["actions"] = {"upload": {"href": f"{self._base()}/lfs-upload/{item['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

    def lfs_upload(self, match, query, method):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != match.group("oid"):
            return self._error(400, "sha256 mismatch")
        self.server.blobs[match.group("oid")] = data
        self._send(200, {})

    def commit(self, match, query, method):
        body = self._body()
        if not self._authorised():
            return self._error(401, "Invalid username or password.")
        repo = self._repo(match)
        if repo is None:
            return
        if unquote(match.group("rev")) != "main":
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        oid, _, files = repo.head("main")
        files, title = dict(files), ""
        for line in filter(None, body.decode().splitlines()):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title = value.get("summary", "")
            elif key == "file":
                content = value["content"]
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                sha = hashlib.sha256(data).hexdigest()
                self.server.blobs[sha] = data
                files[value["path"]] = StoredFile(sha, len(data), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.server.blobs:
                    return self._error(400, f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = StoredFile(value["oid"], value["size"], lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                return self._error(400, f"hub_server: unsupported commit operation {key}")
        new_oid = hashlib.sha1(f"{oid} {title} {len(repo.commits)}".encode()).hexdigest()
        repo.commits.append((new_oid, title, files))
        kind = match.group("kind")
        prefix = "" if kind == "models" else kind + "/"
        url = f"{self._base()}/{prefix}{match.group('repo')}/commit/{new_oid}"
        self._send(200, {"commitUrl": url, "commitOid": new_oid, "pullRequestUrl": None, "success": True})

    def _split_revision(self, repo: Repo, rest: str) -> tuple[str, str]:
        rest = unquote(rest)
        for name in ["main", *[oid for oid, _, _ in repo.commits]]:
            if rest == name or rest.startswith(name + "/"):
                return name, rest[len(name) + 1 :]
        revision, _, path = rest.partition("/")
        return revision, path

    def tree(self, match, query, method):
        repo = self._repo(match)
        if repo is None:
            return
        revision, folder = self._split_revision(repo, match.group("rest"))
        commit = repo.head(revision)
        if commit is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries, folders = [], set()
        for path, stored in sorted(commit[2].items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                name = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and name not in folders:
                    folders.add(name)
                    entries.append({"type": "directory", "oid": hashlib.sha1(name.encode()).hexdigest(), "size": 0,
                                    "path": name})  # fmt: skip
            if recursive or len(parts) == 1:
                entries.append(stored.entry(path, self.server.blobs))
        self._send(200, entries)

    def paths_info(self, match, query, method):
        repo = self._repo(match)
        if repo is None:
            return
        body = self._body()
        commit = repo.head(match.group("rev"))
        if commit is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        if "json" in self.headers.get("Content-Type", ""):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        files = commit[2]
        entries = []
        for path in (p.strip("/") for p in paths):
            if path in files:
                entries.append(files[path].entry(path, self.server.blobs))
            elif any(name.startswith(path + "/") for name in files):
                entries.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0,
                                "path": path})  # fmt: skip
        self._send(200, entries)

    def resolve(self, match, query, method):
        head = method == "HEAD"
        repo = self._repo(match, head=head)
        if repo is None:
            return
        revision, path = self._split_revision(repo, match.group("rest"))
        commit = repo.head(revision)
        if commit is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound", head=head)
        stored = commit[2].get(path)
        if stored is None:
            return self._error(404, "Entry not found", "EntryNotFound", head=head)
        data = self.server.blobs[stored.sha256]
        etag = stored.sha256 if stored.lfs else stored.oid(self.server.blobs)
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit[0], "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(stored.size)})
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
        if wanted and not head:
            start = int(wanted.group(1) or 0)
            end = min(int(wanted.group(2)) if wanted.group(2) else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, raw=data[start : end + 1], headers=headers)
        self._send(200, raw=data, headers=headers, head=head)

    ROUTES = [
        (r"/api/whoami-v2", {"GET"}, whoami),
        (r"/api/validate-yaml", {"POST"}, validate_yaml),
        (r"/api/repos/create", {"POST"}, create_repo),
        (rf"/api/{_KIND}/{_REPO}/preupload/(?P<rev>.+)", {"POST"}, preupload),
        (rf"/api/{_KIND}/{_REPO}/commit/(?P<rev>.+)", {"POST"}, commit),
        (rf"/api/{_KIND}/{_REPO}/tree/(?P<rest>.+)", {"GET"}, tree),
        (rf"/api/{_KIND}/{_REPO}/paths-info/(?P<rev>.+)", {"POST"}, paths_info),
        (rf"/api/{_KIND}/{_REPO}/revision/(?P<rev>.+)", {"GET"}, repo_info),
        (rf"/api/{_KIND}/{_REPO}", {"GET"}, repo_info),
        (r"/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)\.git/info/lfs/objects/batch", {"POST"}, lfs_batch),
        (r"/lfs-upload/(?P<oid>[0-9a-f]{64})", {"PUT"}, lfs_upload),
        (r"/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rest>.+)", {"GET", "HEAD"}, resolve),
    ]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}


class HubServer:
    """The server, started in a daemon thread; `endpoint` is its URL."""

    def __init__(self):
        self._server = _Server()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
