"""The pretrained-weights cache: download through a mirror, verify, convert, cache, offline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ct3dzoo
from ct3dzoo._io.cache import cache_paths
from ct3dzoo._io.checkpoint import read_checkpoint
from ct3dzoo._io.settings import mirror_url
from ct3dzoo._io.weights import load_pretrained_state_dict
from ct3dzoo._specs import WeightsSpec
from ct3dzoo.errors import HashMismatchError, UnsafeCheckpointError, WeightsUnavailableError

TV_HOST = "https://download.pytorch.org"
PV_HOST = "https://dl.fbaipublicfiles.com"


def _tiny_cfg(url: str | None, **kw) -> WeightsSpec:
    """A weights spec for mechanics tests (the state dict is not loaded into a model)."""
    base = ct3dzoo.get_pretrained_cfg("mc3_18.kinetics400")
    kw = {"url": url, "filename": "tiny.pth", "hash_prefix": None, "sha256": None,
          "hf_hub_id": None, **kw}  # fmt: skip
    return dataclasses.replace(base, **kw)


def _tiny_body(seed: int = 0) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.arange(6.0).reshape(2, 3) + seed, "b": torch.zeros(2)}, buf)
    return buf.getvalue()


def _cache_files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def _entries(home: Path) -> list[str]:
    """Cached weights and records (locks and empty temp folders are not entries)."""
    return [f for f in _cache_files(home) if f.startswith("weights")]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- mirror
def test_mirror_url_replaces_scheme_and_host_keeps_path(monkeypatch):
    url = "https://download.pytorch.org/models/r3d_18-b3b3357e.pth"
    assert mirror_url(url) == url  # no mirror set
    assert (
        mirror_url(url, "http://10.0.0.5:8080") == "http://10.0.0.5:8080/models/r3d_18-b3b3357e.pth"
    )
    assert mirror_url(url, "http://m:81/zoo/") == "http://m:81/zoo/models/r3d_18-b3b3357e.pth"
    monkeypatch.setenv("CT3DZOO_MIRROR", "http://127.0.0.1:9")
    assert mirror_url(url) == "http://127.0.0.1:9/models/r3d_18-b3b3357e.pth"
    with pytest.raises(ValueError, match="http://host:port"):
        mirror_url(url, "127.0.0.1:9")


# ------------------------------------------------------------------ end to end: tv / pv
def test_torchvision_download_through_mirror_converts_and_caches(
    http_server, tv_file, point_row, monkeypatch, _isolated_cache
):
    http_server.serve(tv_file.url_path, tv_file.body)
    cfg = point_row(tv_file, TV_HOST)
    monkeypatch.setenv("CT3DZOO_MIRROR", http_server.base)

    model = ct3dzoo.load("mc3_18", num_classes=0, progress=False).eval()
    assert http_server.requests == [("GET", tv_file.url_path)]  # path kept, one request

    paths = cache_paths("mc3_18.kinetics400")
    record = json.loads(paths.record.read_text())
    assert record["upstream_sha256"] == tv_file.sha256
    assert record["safetensors_sha256"] == hashlib.sha256(paths.weights.read_bytes()).hexdigest()
    assert record["source_url"] == cfg.url
    assert record["fetched_from"] == http_server.base + tv_file.url_path
    assert record["hash_prefix"] == tv_file.sha256[:8]
    assert record["num_tensors"] == len(tv_file.state_dict)
    assert _equal(load_file(str(paths.weights)), tv_file.state_dict)  # conversion is lossless
    # no temp download left behind
    assert _entries(_isolated_cache) == [
        "weights/mc3_18.kinetics400.json",
        "weights/mc3_18.kinetics400.safetensors",
    ]
    assert not any((_isolated_cache / "tmp").iterdir())

    x = torch.rand(1, 1, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = ct3dzoo.load("mc3_18", pretrain=str(tv_file.path), num_classes=0).eval()
    with torch.no_grad():
        y, y_ref = model(x), ref(x)
    assert torch.equal(y, y_ref)

    http_server.stop()  # cache hit: no server needed
    again = ct3dzoo.load("mc3_18", num_classes=0, progress=False).eval()
    with torch.no_grad():
        assert torch.equal(again(x), y_ref)


def test_pytorchvideo_unknown_hash_recorded_then_checked(
    http_server, pv_file, point_row, monkeypatch, _isolated_cache
):
    http_server.serve(pv_file.url_path, pv_file.body)
    point_row(pv_file, PV_HOST)
    monkeypatch.setenv("CT3DZOO_MIRROR", http_server.base)
    sd = load_pretrained_state_dict(ct3dzoo.get_pretrained_cfg("x3d_xs"), progress=False)
    assert _equal(sd, pv_file.state_dict)  # {"model_state": ...} unwrapped
    paths = cache_paths("x3d_xs.kinetics400")
    record = json.loads(paths.record.read_text())
    assert record["upstream_sha256"] == pv_file.sha256 and record["hash_prefix"] is None

    # the cached weights go; the publisher's file now has other bytes -> refused
    paths.weights.unlink()
    other = pv_file.body[:-1] + bytes([pv_file.body[-1] ^ 1])
    http_server.serve(pv_file.url_path, other)
    with pytest.raises(HashMismatchError) as err:
        load_pretrained_state_dict(ct3dzoo.get_pretrained_cfg("x3d_xs"), progress=False)
    msg = str(err.value)
    assert pv_file.sha256 in msg and hashlib.sha256(other).hexdigest() in msg
    assert "recorded at first download" in msg and str(paths.record) in msg
    assert not paths.weights.exists()
    assert json.loads(paths.record.read_text())["upstream_sha256"] == pv_file.sha256  # kept


def test_x3d_load_from_cache_matches_file(http_server, pv_file, point_row, monkeypatch):
    http_server.serve(pv_file.url_path, pv_file.body)
    point_row(pv_file, PV_HOST)
    monkeypatch.setenv("CT3DZOO_MIRROR", http_server.base)
    ct3dzoo.fetch("x3d_xs", progress=False)
    http_server.stop()
    x = torch.rand(1, 1, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    a = ct3dzoo.load("x3d_xs", num_classes=0, progress=False).eval()
    b = ct3dzoo.load("x3d_xs", pretrain=str(pv_file.path), num_classes=0).eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert a.model_config["pretrain"] == "x3d_xs.kinetics400"


# -------------------------------------------------------------------------- integrity
def test_hash_prefix_mismatch_rejected_and_not_cached(http_server, _isolated_cache):
    body = _tiny_body()
    url = http_server.serve("/models/tiny-deadbeef.pth", body)
    cfg = _tiny_cfg(url, hash_prefix="deadbeef")
    with pytest.raises(HashMismatchError) as err:
        load_pretrained_state_dict(cfg, progress=False)
    msg = str(err.value)
    assert hashlib.sha256(body).hexdigest() in msg and "deadbeef" in msg
    assert "not kept" in msg
    assert _entries(_isolated_cache) == []
    assert not any((_isolated_cache / "tmp").iterdir())


def test_full_sha256_in_registry_checked(http_server, _isolated_cache):
    body = _tiny_body()
    url = http_server.serve("/tiny.pth", body)
    with pytest.raises(HashMismatchError, match=r"the registry expects 0{64}"):
        load_pretrained_state_dict(_tiny_cfg(url, sha256="0" * 64), progress=False)
    sd = load_pretrained_state_dict(
        _tiny_cfg(url, sha256=hashlib.sha256(body).hexdigest()), progress=False
    )
    assert sd["w"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_truncated_download_leaves_no_cache_entry(http_server, _isolated_cache):
    body = _tiny_body()
    url = http_server.serve("/tiny.pth", body, truncate_to=len(body) // 2)
    with pytest.raises(WeightsUnavailableError) as err:
        load_pretrained_state_dict(_tiny_cfg(url), progress=False)
    assert f"got {len(body) // 2} of {len(body)} bytes" in str(err.value)
    assert _entries(_isolated_cache) == []
    assert not any((_isolated_cache / "tmp").iterdir())
    # the next, complete download works: nothing half-written was left to trip over
    http_server.serve("/tiny.pth", body)
    assert load_pretrained_state_dict(_tiny_cfg(url), progress=False)["b"].tolist() == [0.0, 0.0]


class _Evil:
    """Unpickling this would create a file (what a malicious checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_object_refused(http_server, tmp_path, _isolated_cache):
    import io

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "payload": _Evil(marker)}, buf)
    url = http_server.serve("/evil.pth", buf.getvalue())
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True"):
        load_pretrained_state_dict(_tiny_cfg(url, filename="evil.pth"), progress=False)
    assert not marker.exists()
    assert _entries(_isolated_cache) == []


def test_damaged_cache_is_detected_and_fetched_again(http_server, _isolated_cache):
    body = _tiny_body()
    url = http_server.serve("/tiny.pth", body)
    load_pretrained_state_dict(_tiny_cfg(url), progress=False)
    weights = cache_paths("mc3_18.kinetics400").weights
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged"):
        sd = load_pretrained_state_dict(_tiny_cfg(url), progress=False)
    assert sd["w"][1, 2].item() == 5.0
    assert http_server.count("/tiny.pth") == 2


# ---------------------------------------------------------------------------- offline
@pytest.mark.parametrize("var", ["CT3DZOO_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_uncached_error_says_what_to_do(var, http_server, tv_file, point_row, monkeypatch):
    point_row(tv_file, TV_HOST)
    monkeypatch.setenv("CT3DZOO_MIRROR", http_server.base)
    monkeypatch.setenv(var, "1")
    with pytest.raises(WeightsUnavailableError) as err:
        ct3dzoo.load("mc3_18", num_classes=0, progress=False)
    msg = str(err.value)
    paths = cache_paths("mc3_18.kinetics400")
    assert "offline" in msg
    assert f"{TV_HOST}{tv_file.url_path}" in msg  # which URL to fetch
    assert f"ct3dzoo fetch mc3_18.kinetics400 --from /path/to/{tv_file.filename}" in msg
    assert str(paths.weights) in msg and str(paths.weights.parent) in msg  # where it goes
    assert f"pretrain='/path/to/{tv_file.filename}'" in msg
    assert http_server.count() == 0


@pytest.mark.parametrize("var", [None, "CT3DZOO_OFFLINE", "HF_HUB_OFFLINE"])
def test_cached_weights_load_with_no_request(var, http_server, monkeypatch):
    url = http_server.serve("/tiny.pth", _tiny_body())
    load_pretrained_state_dict(_tiny_cfg(url), progress=False)
    assert http_server.count() == 1
    if var:
        monkeypatch.setenv(var, "true")
    for _ in range(2):
        assert load_pretrained_state_dict(_tiny_cfg(url), progress=False)["w"].shape == (2, 3)
    assert http_server.count() == 1


def test_no_network_fails_fast_with_the_same_help(closed_port, tv_file, point_row, monkeypatch):
    point_row(tv_file, TV_HOST)
    monkeypatch.setenv("CT3DZOO_MIRROR", f"http://127.0.0.1:{closed_port}")
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        ct3dzoo.fetch("mc3_18.kinetics400", progress=False)
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert f"could not download http://127.0.0.1:{closed_port}{tv_file.url_path}" in msg
    assert "ct3dzoo fetch mc3_18.kinetics400 --from" in msg


def test_unresponsive_host_times_out(silent_server, monkeypatch, _isolated_cache):
    monkeypatch.setenv("CT3DZOO_TIMEOUT", "0.5")
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"timeout 0\.5 s"):
        load_pretrained_state_dict(_tiny_cfg(silent_server + "/tiny.pth"), progress=False)
    assert time.perf_counter() - t0 < 5
    assert _entries(_isolated_cache) == []


def test_row_without_url_says_where_to_get_the_file():
    cfg = _tiny_cfg(None, arch="penet", tag="kinetics600", filename="xnet_kin_90.pth.tar",
                    url_info="Stanford Box folder: https://stanfordmedicine.box.com/s/abc")  # fmt: skip
    with pytest.raises(WeightsUnavailableError) as err:
        load_pretrained_state_dict(cfg, progress=False)
    msg = str(err.value)
    assert "no direct download URL" in msg and "https://stanfordmedicine.box.com/s/abc" in msg
    assert "xnet_kin_90.pth.tar" in msg
    assert "ct3dzoo fetch penet.kinetics600 --from FILE" in msg and "pretrain=" in msg


# ------------------------------------------------------------------------ fetch --from
def test_fetch_from_file_offline_then_load(tv_file, point_row, monkeypatch, http_server):
    point_row(tv_file, TV_HOST)
    monkeypatch.setenv("CT3DZOO_OFFLINE", "1")
    monkeypatch.setenv("CT3DZOO_MIRROR", http_server.base)
    path = ct3dzoo.fetch("mc3_18", from_file=tv_file.path, progress=False)
    assert path == cache_paths("mc3_18.kinetics400").weights
    assert json.loads(path.with_suffix(".json").read_text())["fetched_from"] == str(tv_file.path)
    assert ct3dzoo.fetch("mc3_18", from_file=tv_file.path) == path  # same file again: no work
    sd = load_pretrained_state_dict(ct3dzoo.get_pretrained_cfg("mc3_18"), progress=False)
    assert _equal(sd, tv_file.state_dict)
    assert http_server.count() == 0


def test_fetch_from_wrong_file_rejected(tv_file, point_row, tmp_path, _isolated_cache):
    point_row(tv_file, TV_HOST)
    wrong = tmp_path / tv_file.filename
    wrong.write_bytes(_tiny_body())
    with pytest.raises(HashMismatchError, match=tv_file.sha256[:8]):
        ct3dzoo.fetch("mc3_18.kinetics400", from_file=wrong)
    assert _entries(_isolated_cache) == []
    with pytest.raises(FileNotFoundError, match="not found"):
        ct3dzoo.fetch("mc3_18.kinetics400", from_file=tmp_path / "missing.pth")


# --------------------------------------------------------------------------- the Hub
def test_hf_hub_row_loads_through_huggingface_hub(
    http_server, hf_env, monkeypatch, _isolated_cache
):
    from safetensors.torch import save

    sd = {"w": torch.randn(3, 4), "b": torch.randn(3)}
    http_server.serve_hf_repo("ct3dzoo/tiny-upstream", {"model.safetensors": save(sd)})
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    cfg = _tiny_cfg(None, hf_hub_id="ct3dzoo/tiny-upstream")
    assert _equal(load_pretrained_state_dict(cfg, progress=False), sd)
    assert ("GET", "/ct3dzoo/tiny-upstream/resolve/main/model.safetensors") in http_server.requests
    assert _entries(_isolated_cache) == []  # the HF cache holds it, not ours
    n = http_server.count()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _equal(load_pretrained_state_dict(cfg, progress=False), sd)  # from the HF cache
    assert http_server.count() == n


def test_hf_hub_failure_falls_back_to_url(http_server, hf_env, monkeypatch):
    url = http_server.serve("/tiny.pth", _tiny_body())
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)  # serves no such repo: 404
    cfg = _tiny_cfg(url, hf_hub_id="ct3dzoo/missing")
    assert load_pretrained_state_dict(cfg, progress=False)["w"].shape == (2, 3)
    assert http_server.count("/tiny.pth") == 1


# ------------------------------------------------------------------------ concurrency
_CHILD = textwrap.dedent(
    """
    import json, sys
    from ct3dzoo._io.weights import load_pretrained_state_dict
    from ct3dzoo._specs import WeightsSpec
    sd = load_pretrained_state_dict(WeightsSpec.from_dict(json.loads(sys.argv[1])), progress=False)
    print(sorted(sd), float(sd["w"].sum()))
    """
)


def test_two_processes_loading_at_once_both_succeed(http_server, _isolated_cache):
    url = http_server.serve("/tiny.pth", _tiny_body(), delay=1.5)
    cfg = json.dumps(_tiny_cfg(url).to_dict())
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, cfg],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, errs) in zip(procs, outs):
        assert p.returncode == 0, errs
        assert out.strip() == "['b', 'w'] 15.0"
    assert http_server.count("/tiny.pth") == 1  # the second waited for the lock, then hit
    assert _entries(_isolated_cache) == [
        "weights/mc3_18.kinetics400.json",
        "weights/mc3_18.kinetics400.safetensors",
    ]


def test_read_checkpoint_unchanged(tmp_path):
    p = tmp_path / "m.pth"
    torch.save({"model_state": {"module.a": torch.ones(1)}}, p)
    assert read_checkpoint(p)["a"].item() == 1.0
