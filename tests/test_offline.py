"""Offline is detected fast (issue 21, point 4): an unresolvable host, or one that refuses
or does not answer, is a clear WeightsUnavailableError within seconds, never retried;
offline mode makes no request."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest
import torch

import ct3dzoo
from ct3dzoo._io import download as transport
from ct3dzoo._io.weights import load_pretrained_state_dict
from ct3dzoo.errors import WeightsUnavailableError

NOWHERE = "http://ct3dzoo-nonexistent.invalid"  # .invalid never resolves (RFC 2606)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every host name looked up in this test (the real resolver still answers)."""
    seen: list[str] = []
    real = socket.getaddrinfo

    def spy(host, *a, **kw):
        seen.append(host)
        return real(host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    ct3dzoo.get_pretrained_cfg("r3d_18")  # import the model zoo before any clock starts
    return seen


def test_url_download_unresolvable_host_fails_fast(monkeypatch, lookups) -> None:
    monkeypatch.setenv("CT3DZOO_MIRROR", NOWHERE)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        ct3dzoo.fetch("r3d_18.kinetics400", progress=False)
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    assert "cannot resolve the host 'ct3dzoo-nonexistent.invalid'" in msg
    assert "nothing was retried" in msg and "CT3DZOO_OFFLINE=1" in msg
    assert "ct3dzoo fetch r3d_18.kinetics400 --from" in msg  # the manual route
    assert lookups == ["ct3dzoo-nonexistent.invalid"]


def test_hub_download_unresolvable_endpoint_fails_fast(monkeypatch, hf_env, lookups) -> None:
    monkeypatch.setenv("HF_ENDPOINT", NOWHERE)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        ct3dzoo.fetch("medicalnet_resnet10.23datasets", progress=False)
    assert time.perf_counter() - t0 < 5  # huggingface_hub's own backoff took ~23 s
    msg = str(info.value)
    assert "Hub repo TencentMedicalNet/MedicalNet-Resnet10" in msg
    assert "cannot resolve the host 'ct3dzoo-nonexistent.invalid'" in msg
    assert "nothing was retried" in msg
    assert lookups == ["ct3dzoo-nonexistent.invalid"]  # one lookup: ours, no retries


@pytest.mark.parametrize("var", ["CT3DZOO_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("name", ["r3d_18.kinetics400", "medicalnet_resnet10.23datasets"])
def test_offline_mode_makes_no_lookup(monkeypatch, hf_env, lookups, var, name) -> None:
    monkeypatch.setenv(var, "1")
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"offline|not in the ct3dzoo cache|cache"):
        ct3dzoo.fetch(name, progress=False)
    assert time.perf_counter() - t0 < 5
    assert lookups == []


def test_silent_resolver_is_bounded(monkeypatch) -> None:
    def hang(*a, **kw):
        time.sleep(10)
        raise socket.gaierror("late")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    monkeypatch.setenv("CT3DZOO_RESOLVE_TIMEOUT", "0.3")
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"no answer from the name resolver in 0.3 s"):
        transport.check_resolves("https://huggingface.co")
    assert time.perf_counter() - t0 < 2


def test_proxy_skips_the_lookup(monkeypatch, lookups) -> None:
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    transport.check_resolves("https://ct3dzoo-nonexistent.invalid/x")  # the proxy resolves
    assert lookups == []


def test_bad_resolve_timeout_names_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("CT3DZOO_RESOLVE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"CT3DZOO_RESOLVE_TIMEOUT must be a number of seconds"):
        transport.check_resolves("https://huggingface.co")


def test_hf_hub_model_unresolvable_endpoint_fails_fast(monkeypatch, hf_env, lookups) -> None:
    monkeypatch.setenv("HF_ENDPOINT", NOWHERE)
    t0 = time.perf_counter()
    with pytest.raises(Exception, match=r"cannot resolve the host 'ct3dzoo-nonexistent.invalid'"):
        ct3dzoo.load("hf-hub:someorg/mc3-ct", progress=False)
    assert time.perf_counter() - t0 < 5
    assert lookups == ["ct3dzoo-nonexistent.invalid"]


def _closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("var", "name", "what"),
    [("HF_ENDPOINT", "medicalnet_resnet10.23datasets", "Hub repo"),
     ("CT3DZOO_MIRROR", "r3d_18.kinetics400", "could not download")],
)  # fmt: skip
def test_refused_connection_fails_fast(monkeypatch, hf_env, var, name, what) -> None:
    port = _closed_port()
    monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    ct3dzoo.get_pretrained_cfg(name)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        ct3dzoo.fetch(name, progress=False)
    assert time.perf_counter() - t0 < 5  # huggingface_hub's own backoff took ~23 s (Hub row)
    msg = str(info.value)
    assert f"cannot connect to 127.0.0.1:{port}" in msg and "refused" in msg.lower()
    assert what in msg and "nothing was retried" in msg


def test_silent_host_is_bounded(monkeypatch) -> None:
    calls: list[tuple] = []

    def drop(address, timeout=None, *a, **kw):  # a firewall that drops the SYN
        calls.append((address, timeout))
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", drop)
    monkeypatch.setenv("CT3DZOO_RESOLVE_TIMEOUT", "0.3")
    with pytest.raises(WeightsUnavailableError, match=r"cannot connect to 127.0.0.1:8443 \(no "
                       r"answer in 0.3 s \(CT3DZOO_RESOLVE_TIMEOUT\)\)"):  # fmt: skip
        transport.check_reachable("https://127.0.0.1:8443/x")
    assert calls == [(("127.0.0.1", 8443), 0.3)]


@pytest.mark.parametrize("endpoint", ["unresolvable", "refusing"])
def test_hub_file_in_hf_cache_still_served_when_host_unreachable(
    http_server, hf_env, monkeypatch, lookups, endpoint
) -> None:
    from safetensors.torch import save

    sd = {"w": torch.randn(3, 4)}
    http_server.serve_hf_repo("ct3dzoo/tiny-upstream", {"model.safetensors": save(sd)})
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    base = ct3dzoo.get_pretrained_cfg("mc3_18.kinetics400")
    cfg = dataclasses.replace(base, url=None, hf_hub_id="ct3dzoo/tiny-upstream")
    assert torch.equal(load_pretrained_state_dict(cfg, progress=False)["w"], sd["w"])
    unreachable = NOWHERE if endpoint == "unresolvable" else f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", unreachable)
    n = http_server.count()
    t0 = time.perf_counter()
    assert torch.equal(load_pretrained_state_dict(cfg, progress=False)["w"], sd["w"])
    assert time.perf_counter() - t0 < 5 and http_server.count() == n
