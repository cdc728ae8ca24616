"""Offline failure benchmark: seconds from a weights request to its clear error, no network.

Each row runs in a fresh interpreter with empty caches (``CT3DZOO_HOME``, ``HF_HUB_CACHE``
in a temporary folder); the clock starts after the imports, so it measures the network
path alone:

- URL / Hub rows: ``ct3dzoo.fetch`` of a weights row hosted at an upstream URL
  (``r3d_18.kinetics400``) and on the Hub (``medicalnet_resnet10.23datasets``), once with
  the real hosts (on a machine without network: what a user sees) and once pointed at
  ``ct3dzoo-nonexistent.invalid`` (``CT3DZOO_MIRROR`` / ``HF_ENDPOINT``; ``.invalid`` never
  resolves, so these rows measure the same on any machine), and once at a loopback port
  with nothing listening (a host that refuses the connection: a mirror or proxy that is down);
- baseline: ``huggingface_hub.hf_hub_download`` of the same Hub file, the call ct3dzoo made
  before it resolved the host itself (huggingface_hub retries network errors with backoff);
- demo start: ``ct3dzoo.load("medicalnet_resnet10", pretrain="medicalnet")``, what
  ``ct3dzoo demo`` tries before falling back to random weights.

Usage: ``python benchmarks/offline_failure.py [--repeats 3] [--skip-baseline]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

NOWHERE = "http://ct3dzoo-nonexistent.invalid"
HUB_ROW = "medicalnet_resnet10.23datasets"
ROWS: dict[str, dict[str, str]] = {
    "URL row, real host (ct3dzoo.fetch r3d_18.kinetics400)": {"row": "url"},
    "URL row, .invalid mirror (CT3DZOO_MIRROR)": {"row": "url", "CT3DZOO_MIRROR": NOWHERE},
    f"Hub row, real host (ct3dzoo.fetch {HUB_ROW})": {"row": "hub"},
    "Hub row, .invalid endpoint (HF_ENDPOINT)": {"row": "hub", "HF_ENDPOINT": NOWHERE},
    "demo start (load medicalnet_resnet10, pretrain='medicalnet')": {"row": "demo"},
    "baseline: huggingface_hub.hf_hub_download, real host": {"row": "baseline"},
    "baseline: huggingface_hub.hf_hub_download, .invalid endpoint": {
        "row": "baseline",
        "HF_ENDPOINT": NOWHERE,
    },
}


def _closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused_rows() -> dict[str, dict[str, str]]:
    refused = f"http://127.0.0.1:{_closed_port()}"
    return {
        "URL row, refused mirror (CT3DZOO_MIRROR=loopback, nothing listening)": {
            "row": "url", "CT3DZOO_MIRROR": refused},
        "Hub row, refused endpoint (HF_ENDPOINT=loopback, nothing listening)": {
            "row": "hub", "HF_ENDPOINT": refused},
        "baseline: huggingface_hub.hf_hub_download, refused endpoint": {
            "row": "baseline", "HF_ENDPOINT": refused},
    }  # fmt: skip


def _child(row: str) -> None:
    """Run one row in this (fresh) interpreter; print {"seconds", "error"} as JSON."""
    import huggingface_hub

    import ct3dzoo

    spec = ct3dzoo.get_pretrained_cfg(HUB_ROW)  # imports the model zoo before the clock
    t0 = time.perf_counter()
    try:
        if row == "url":
            ct3dzoo.fetch("r3d_18.kinetics400", progress=False)
        elif row == "hub":
            ct3dzoo.fetch(HUB_ROW, progress=False)
        elif row == "demo":
            ct3dzoo.load("medicalnet_resnet10", pretrain="medicalnet", num_classes=1)
        else:
            huggingface_hub.hf_hub_download(spec.hf_hub_id, spec.hf_hub_filename)
        error = "no error"
    except Exception as e:
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    print(json.dumps({"seconds": time.perf_counter() - t0, "error": error}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child)
    print(f"python {platform.python_version()}, {platform.platform()}")
    print("| Request | median s to the error | runs (s) | error |\n|---|---:|---|---|")
    for name, setting in {**ROWS, **_refused_rows()}.items():
        if args.skip_baseline and setting["row"] == "baseline":
            continue
        runs, error = [], ""
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CT3DZOO_"))}
                env.update({k: v for k, v in setting.items() if k != "row"})
                env.update(CT3DZOO_HOME=f"{tmp}/ct3dzoo", HF_HUB_CACHE=f"{tmp}/hf")
                out = subprocess.run(
                    [sys.executable, __file__, "--child", setting["row"]],
                    env=env, check=True, capture_output=True, text=True,
                )  # fmt: skip
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs.append(result["seconds"])
                error = result["error"]
        shown = ", ".join(f"{t:.2f}" for t in runs)
        print(f"| {name} | {statistics.median(runs):.2f} | {shown} | {error} |", flush=True)


if __name__ == "__main__":
    main()
