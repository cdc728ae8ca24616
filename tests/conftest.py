"""Shared fixtures: an isolated weights cache, and a loopback HTTP server that stands in for
upstream hosts (download.pytorch.org, dl.fbaipublicfiles.com) and the Hugging Face Hub."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clean clone without installing
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import ct3dzoo  # noqa: E402
from ct3dzoo import _registry  # noqa: E402
from ct3dzoo._specs import WeightsSpec  # noqa: E402

_ENV_VARS = (
    "CT3DZOO_MIRROR",
    "CT3DZOO_OFFLINE",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "CT3DZOO_TIMEOUT",
)


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own ``CT3DZOO_HOME`` and no mirror/offline settings from outside."""
    home = tmp_path_factory.mktemp("ct3dzoo_home")
    monkeypatch.setenv("CT3DZOO_HOME", str(home))
    for var in _ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return home


@dataclass
class Route:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    truncate_to: int | None = None  # send this many bytes of the body, then close
    delay: float = 0.0  # seconds before answering
    status: int = 200


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (ephemeral port) serving registered paths.

    ``requests`` lists ``(method, path)`` of every request received.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _answer(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                with outer._lock:
                    outer.requests.append((self.command, path))
                    route = outer.routes.get(path)
                if route is None:
                    body = b"not found"
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                    self.close_connection = True
                    return
                if route.delay:
                    time.sleep(route.delay)
                self.send_response(route.status)
                self.send_header("Content-Length", str(len(route.body)))
                self.send_header("Connection", "close")
                for k, v in route.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    n = len(route.body) if route.truncate_to is None else route.truncate_to
                    self.wfile.write(route.body[:n])
                    self.wfile.flush()
                self.close_connection = True

            def do_GET(self) -> None:
                self._answer(head=False)

            def do_HEAD(self) -> None:
                self._answer(head=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve(
        self,
        path: str,
        body: bytes,
        *,
        truncate_to: int | None = None,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Serve ``body`` at ``path``; return its URL."""
        with self._lock:
            self.routes[path] = Route(body, dict(headers or {}), truncate_to, delay)
        return self.base + path

    def serve_hf_repo(
        self, repo_id: str, files: dict[str, bytes], *, commit: str = "c0ffee" * 6 + "c0fe"
    ) -> str:
        """The routes huggingface_hub's ``hf_hub_download`` uses for a model repo:
        ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` for revision ``main`` and
        ``commit``, answering ``X-Repo-Commit`` and ``ETag``. Returns the commit hash."""
        for name, body in files.items():
            etag = hashlib.sha256(body).hexdigest()
            headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}
            for rev in ("main", commit):
                self.serve(f"/{repo_id}/resolve/{rev}/{name}", body, headers=headers)
        return commit

    def count(self, path: str | None = None) -> int:
        """Requests received (for ``path`` only when given)."""
        with self._lock:
            return sum(1 for _, p in self.requests if path is None or p == path)

    def stop(self) -> None:
        if self.running:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self.running = False


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    """A loopback HTTP server; stopped at teardown (tests may stop it earlier)."""
    server = LoopbackServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a socket that accepts connections but never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache for this test (huggingface_hub reads its cache path at
    import time, so the module constant is patched too). Returns the cache folder."""
    import huggingface_hub.constants as hfc

    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    return cache


# ------------------------------------------------------------ upstream-format files


@dataclass(frozen=True)
class UpstreamFile:
    name: str  # arch.tag
    path: Path  # on disk, named like the real file
    body: bytes
    sha256: str
    state_dict: dict[str, torch.Tensor]
    url_path: str  # the real URL's path, e.g. /models/mc3_18-1a2b3c4d.pth

    @property
    def filename(self) -> str:
        return self.path.name


def _randomise(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            v = v + torch.randn(v.shape, generator=g) * 0.02
            if k.endswith("running_var"):
                v = v.abs() + 0.5
        out[k] = v
    return out


def _dump(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def make_torchvision_file(folder: Path, arch: str = "mc3_18") -> UpstreamFile:
    """``torch.save(torchvision.models.video.<arch>().state_dict())`` named
    ``<arch>-<first 8 hex of its sha256>.pth`` as torchvision names its files."""
    from torchvision.models import video as tvv

    torch.manual_seed(0)
    sd = _randomise(getattr(tvv, arch)().state_dict())
    body = _dump(sd)
    sha = hashlib.sha256(body).hexdigest()
    path = folder / f"{arch}-{sha[:8]}.pth"
    path.write_bytes(body)
    return UpstreamFile(f"{arch}.kinetics400", path, body, sha, sd, f"/models/{path.name}")


def make_pytorchvideo_file(folder: Path, arch: str = "x3d_xs") -> UpstreamFile:
    """pytorchvideo's model-zoo format: ``{"model_state": state_dict}`` in ``X3D_XS.pyth``."""
    from pytorchvideo.models import hub as pvh

    torch.manual_seed(0)
    sd = _randomise(getattr(pvh, arch)(pretrained=False).state_dict())
    body = _dump({"model_state": sd, "epoch": 300})
    path = folder / f"{arch.upper()}.pyth"
    path.write_bytes(body)
    return UpstreamFile(
        f"{arch}.kinetics400",
        path,
        body,
        hashlib.sha256(body).hexdigest(),
        sd,
        f"/pytorchvideo/model_zoo/kinetics/{path.name}",
    )


def _patch_row(monkeypatch: pytest.MonkeyPatch, name: str, **changes: Any) -> WeightsSpec:
    """Change registry row ``name`` for this test (e.g. its url/hash_prefix to match a
    generated file: the real prefixes belong to the real files)."""
    ct3dzoo.list_models()  # registers the families
    row = dataclasses.replace(_registry._WEIGHTS[name], **changes)
    monkeypatch.setitem(_registry._WEIGHTS, name, row)
    return row


def _point_row_at(monkeypatch: pytest.MonkeyPatch, f: UpstreamFile, host: str) -> WeightsSpec:
    """Make ``f``'s registry row name ``host + f.url_path`` (hash prefix from its name for
    torchvision files, no hash for pytorchvideo ones)."""
    torchvision_style = f.filename.endswith(".pth")
    return _patch_row(
        monkeypatch,
        f.name,
        url=host + f.url_path,
        filename=f.filename,
        hash_prefix=f.sha256[:8] if torchvision_style else None,
        sha256=None,
        hf_hub_id=None,
    )


@pytest.fixture(scope="session")
def tv_file(tmp_path_factory: pytest.TempPathFactory) -> UpstreamFile:
    """mc3_18 weights in torchvision's format (session-wide, read-only)."""
    return make_torchvision_file(tmp_path_factory.mktemp("upstream_tv"))


@pytest.fixture(scope="session")
def pv_file(tmp_path_factory: pytest.TempPathFactory) -> UpstreamFile:
    """x3d_xs weights in pytorchvideo's format (session-wide, read-only)."""
    return make_pytorchvideo_file(tmp_path_factory.mktemp("upstream_pv"))


@pytest.fixture
def patch_row(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``patch_row(name, **changes)``: change a registry row for this test only."""
    return lambda name, **changes: _patch_row(monkeypatch, name, **changes)


@pytest.fixture
def point_row(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``point_row(upstream_file, host)``: make the file's row download ``host + url_path``."""
    return lambda f, host: _point_row_at(monkeypatch, f, host)
