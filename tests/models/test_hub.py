"""Hugging Face Hub round trip (faceparse.hub) against a Hub-shaped HTTP server on 127.0.0.1.

The server below implements only the endpoints huggingface_hub calls for ``create_repo``,
``create_branch``, ``upload_folder`` (README validation, preupload, NDJSON commit with inline base64
files), ``snapshot_download`` (repo info, tree listing) and ``hf_hub_download`` (HEAD/GET resolve),
keeping repositories in memory. It records every request, so tests can assert what went over the wire
(and that nothing did). Never the internet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch

pytest.importorskip("huggingface_hub")

import faceparse
from faceparse.errors import FaceParseError
from faceparse.hub import model_card, parse_hub_id


class FakeHub:
    """In-memory repositories: repo_id -> {"branches": {name: commit}, "commits": {commit: {path: bytes}}}."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def files(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos[repo_id]
        commit = repo["branches"].get(revision, revision if revision in repo["commits"] else None)
        return None if commit is None else (commit, repo["commits"][commit])


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        # ------------------------------------------------------------------ helpers
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _repo(self, repo_id: str, head: bool = False) -> dict | None:
            if repo_id not in hub.repos:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
                return None
            return hub.repos[repo_id]

        # ------------------------------------------------------------------ routes
        def do_POST(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(("POST", path))
            if path == "/api/repos/create":
                body = json.loads(self._body())
                repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
                url = f"http://{self.headers['Host']}/{repo_id}"
                with hub.lock:
                    if repo_id in hub.repos:  # the Hub's 409 names the existing repository
                        body = json.dumps({"error": "You already created this model repo", "url": url}).encode()
                        return self._send(409, body, {"Content-Type": "application/json"})
                    root = uuid.uuid4().hex + uuid.uuid4().hex[:8]
                    hub.repos[repo_id] = {"branches": {"main": root}, "commits": {root: {}}}
                return self._json({"url": url})
            if path == "/api/validate-yaml":
                self._body()
                return self._json({"errors": [], "warnings": []})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)", path)
            if m:
                repo_id, action, rev = m.groups()
                body = self._body()
                repo = self._repo(repo_id)
                if repo is None:
                    return None
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                    )
                if action == "branch":
                    with hub.lock:
                        repo["branches"].setdefault(rev, repo["branches"]["main"])
                    return self._json({})
                found = hub.files(repo_id, rev)
                if found is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                files = dict(found[1])
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "deletedFile":
                        files.pop(item["value"]["path"], None)
                    elif item["key"] != "header":  # lfsFile etc.: not offered by this server's preupload
                        return self._error(400, "BadRequest", f"unsupported commit item {item['key']}")
                commit = hashlib.sha1(body + uuid.uuid4().bytes).hexdigest()
                with hub.lock:
                    repo["commits"][commit] = files
                    repo["branches"][rev] = commit
                host = self.headers["Host"]
                return self._json(
                    {
                        "commitUrl": f"http://{host}/{repo_id}/commit/{commit}",
                        "commitOid": commit,
                        "pullRequestUrl": None,
                    }
                )
            hub.unknown.append(("POST", path))
            return self._error(404, "EntryNotFound", f"no route {path}")

        def _get(self, head: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.requests.append(("HEAD" if head else "GET", path))
            if path == "/api/agent-harnesses" and not head:  # huggingface_hub's user-agent detection
                return self._json({"standardEnvVars": [], "harnesses": {}})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
            if m and not head:
                repo_id, action, rev, _sub = m.groups()
                if self._repo(repo_id) is None:
                    return None
                found = hub.files(repo_id, rev)
                if found is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                commit, files = found
                if action == "revision":
                    siblings = [{"rfilename": p} for p in sorted(files)]
                    return self._json({"id": repo_id, "sha": commit, "siblings": siblings, "private": False})
                tree = [
                    {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for p, b in sorted(files.items())
                ]
                return self._json(tree)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                repo_id, rev, filename = m.groups()
                if self._repo(repo_id, head=head) is None:
                    return None
                found = hub.files(repo_id, rev)
                if found is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
                commit, files = found
                if filename not in files:
                    return self._error(404, "EntryNotFound", f"{filename} does not exist", head=head)
                data = files[filename]
                headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
                return self._send(200, data, headers, head=head)
            hub.unknown.append(("HEAD" if head else "GET", path))
            return self._error(404, "EntryNotFound", f"no route {path}", head=head)

        def do_GET(self) -> None:
            self._get(head=False)

        def do_HEAD(self) -> None:
            self._get(head=True)

    return Handler


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake Hub on 127.0.0.1 (HF_ENDPOINT points at it) and an empty huggingface_hub cache."""
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    import huggingface_hub.constants
    import huggingface_hub.utils._detect_agent as detect_agent

    # faceparse.hub reads HF_ENDPOINT at call time (huggingface_hub read it once, at import)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    # huggingface_hub's best-effort user-agent detection fetches a registry from the endpoint it saw at
    # import: give it an empty one, so that nothing leaves the machine
    monkeypatch.setattr(detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}}, raising=False)
    # tests/conftest.py sets HF_HUB_OFFLINE=1 for the whole suite; this server is the one exception
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_loopback")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield fake
    server.shutdown()
    server.server_close()
    assert not fake.unknown, f"huggingface_hub called endpoints the fake Hub does not implement: {fake.unknown}"


def _tiny(seed: int):
    torch.manual_seed(seed)
    return faceparse.build_model("consensus_net", label_set="part_labels", width=8, input_size=32).eval()


def _same_outputs(a, b) -> None:
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_push_then_load_round_trip(hub):
    model = _tiny(0)
    info = model.push_to_hub("faceparse-tests/tiny-consensus")
    files = hub.repos["faceparse-tests/tiny-consensus"]["commits"][info.oid]
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert json.loads(files["config.json"])["registry_name"] == "consensus_net"
    assert 'load_model("hf-hub:faceparse-tests/tiny-consensus")' in files["README.md"].decode()

    loaded = faceparse.load_model("hf-hub:faceparse-tests/tiny-consensus")
    assert type(loaded) is type(model) and loaded.label_set == model.label_set
    assert loaded.default_input_size == 32
    _same_outputs(model, loaded)
    downloads = [p for m, p in hub.requests if m == "GET" and p.endswith("/model.safetensors")]
    assert len(downloads) == 1 and downloads[0].startswith(f"/faceparse-tests/tiny-consensus/resolve/{info.oid}/")


def test_revisions_branch_and_commit(hub):
    first, second = _tiny(0), _tiny(1)
    c1 = first.push_to_hub("org/m").oid
    c2 = second.push_to_hub("org/m", revision="v2", commit_message="second weights").oid
    assert c1 != c2 and hub.repos["org/m"]["branches"] == {"main": c1, "v2": c2}
    _same_outputs(faceparse.load_model("hf-hub:org/m"), first)
    _same_outputs(faceparse.load_model("hf-hub:org/m@v2"), second)
    _same_outputs(faceparse.load_model(f"hf-hub:org/m@{c1}"), first)
    # pushing again to an existing repository commits on top of it
    c3 = second.push_to_hub("org/m").oid
    assert hub.repos["org/m"]["branches"]["main"] == c3
    _same_outputs(faceparse.load_model("hf-hub:org/m"), second)
    with pytest.raises(FaceParseError, match="has no revision 'nope'"):
        faceparse.load_model("hf-hub:org/m@nope")


def test_offline_uses_the_cache_or_says_why_not(hub, monkeypatch):
    model = _tiny(2)
    model.push_to_hub("org/cached")
    faceparse.load_model("hf-hub:org/cached")  # fills the cache
    before = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _same_outputs(faceparse.load_model("hf-hub:org/cached"), model)
    assert len(hub.requests) == before, "offline mode must not touch the network"
    with pytest.raises(
        FaceParseError, match="HF_HUB_OFFLINE is set and Hub model 'org/never' .* not in the local cache"
    ):
        faceparse.load_model("hf-hub:org/never")
    with pytest.raises(FaceParseError, match="HF_HUB_OFFLINE is set: cannot push"):
        model.push_to_hub("org/cached")
    assert len(hub.requests) == before


def test_nothing_is_downloaded_without_a_hub_id(hub, tmp_path):
    model = _tiny(3)
    model.save_pretrained(tmp_path / "local")
    _same_outputs(faceparse.load_model(tmp_path / "local"), model)
    _same_outputs(faceparse.load_model(str(tmp_path / "local")), model)
    with pytest.raises(FaceParseError, match="does not exist"):
        faceparse.load_model("org/name")  # a Hub-looking local path is still a local path
    assert hub.requests == []


def test_hub_errors(hub):
    with pytest.raises(FaceParseError, match="Hub model 'org/missing' not found"):
        faceparse.load_model("hf-hub:org/missing")
    # a repository whose config.json is not faceparse's (e.g. a transformers SegFormer)
    hub.repos["org/segformer"] = {
        "branches": {"main": "c" * 40},
        "commits": {"c" * 40: {"config.json": b'{"model_type": "segformer"}', "model.safetensors": b"x"}},
    }
    with pytest.raises(FaceParseError, match="not a faceparse model folder.*convert segformer-hf"):
        faceparse.load_model("hf-hub:org/segformer")
    hub.repos["org/empty"] = {"branches": {"main": "d" * 40}, "commits": {"d" * 40: {"README.md": b"hi"}}}
    with pytest.raises(FaceParseError, match="has no config.json"):
        faceparse.load_model("hf-hub:org/empty")
    for bad in ("hf-hub:", "hf-hub:name", "hf-hub:a/b/c", "hf-hub:a/b@"):
        with pytest.raises(FaceParseError, match="not a Hub model id"):
            faceparse.load_model(bad)


def test_parse_hub_id_and_model_card():
    assert parse_hub_id("hf-hub:org/name") == ("org/name", None)
    assert parse_hub_id("hf-hub:org/name@v1.0") == ("org/name", "v1.0")
    card = model_card(_tiny(0), "org/name")
    assert card.startswith("---\nlibrary_name: faceparse\n")
    assert "Label set `part_labels` (3 classes): 0 background, 1 face, 2 hair." in card


def test_missing_huggingface_hub_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(FaceParseError, match=r"pip install 'faceparse\[hub\]'"):
        faceparse.load_model("hf-hub:org/name")


class _TinyScripted(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = torch.cat([x.mean(1, keepdim=True) * i for i in range(11)], dim=1)
        return logits, {}


def test_torchscript_folders_need_explicit_trust(hub, tmp_path):
    from faceparse.hub import download_model
    from faceparse.models.farl import convert_farl

    src = tmp_path / "face_parsing.farl.lapa.main_ema_136500_jit191.pt"
    torch.jit.save(torch.jit.script(_TinyScripted()), src)
    model = convert_farl(src, tmp_path / "farl")
    info = model.push_to_hub("org/farl")
    assert "model.torchscript.pt" in hub.repos["org/farl"]["commits"][info.oid]
    with pytest.raises(FaceParseError, match=r"holds a TorchScript program \(model.torchscript.pt\)"):
        faceparse.load_model("hf-hub:org/farl")
    loaded = faceparse.load_model(download_model("hf-hub:org/farl", trust_torchscript=True))
    assert loaded.label_set.name == "lapa" and loaded.warp == "tanh"
    _same_outputs(model, loaded)


def test_commands_take_hub_ids(hub, tmp_path, capsys, monkeypatch):
    """predict, evaluate and export accept --model hf-hub:ORG/NAME (downloaded once into the cache)."""
    from PIL import Image

    from faceparse.cli import main

    model = _tiny(4)
    model.push_to_hub("faceparse-tests/cli")
    image = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(image), "--model", "hf-hub:faceparse-tests/cli", "--out-dir", str(tmp_path / "o")]) == 0
    labels = np.asarray(Image.open(tmp_path / "o" / "face_labels.png"))
    assert labels.shape == (40, 48)
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", "hf-hub:faceparse-tests/cli", "--size", "32"]) == 0
    assert (tmp_path / "cli.onnx").is_file()
    downloads = [p for m, p in hub.requests if m == "GET" and p.endswith("/model.safetensors")]
    assert len(downloads) == 1  # the second command read the cache
    capsys.readouterr()
