"""``torchrun --nproc_per_node 2`` on gloo (127.0.0.1) gives the same history, weights and
predictions as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_train_common import BlobData, make_model
from ct3dzoo.train import finetune, predict
from ct3dzoo.train.loop import TIMING_KEYS

out, batch_size = sys.argv[1], int(sys.argv[2])
model = make_model()
r = finetune(
    model,
    BlobData(32, seed=0, augment=True),
    BlobData(18, seed=1, windows_per_study=3),  # 18 items: uneven shards of the val set
    epochs=2, lr=1e-2, batch_size=batch_size, out_dir=out, progress=False, warmup_epochs=0.5,
)
probs = predict(model, BlobData(7, seed=2), batch_size=2)
if int(os.environ.get("RANK", "0")) == 0:
    history = [{{k: v for k, v in h.items() if k not in TIMING_KEYS}} for h in r.history]
    print(json.dumps({{"history": history, "probs": probs.flatten().tolist(),
                      "world": int(os.environ.get("WORLD_SIZE", "1"))}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> dict:
    root = str(TESTS.parent)
    pp = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "PYTHONPATH": root + (os.pathsep + pp if pp else ""),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_two_processes_match_one(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    single = _run([sys.executable, str(script), str(tmp_path / "one"), "4"])
    ddp = _run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), str(script), str(tmp_path / "two"), "2",
        ]
    )  # fmt: skip
    assert single["world"] == 1 and ddp["world"] == 2
    assert len(ddp["history"]) == len(single["history"]) == 2
    for a, b in zip(single["history"], ddp["history"]):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
    assert ddp["probs"] == pytest.approx(single["probs"], abs=1e-5)
    assert len(ddp["probs"]) == 7  # every item once, gathered from uneven shards
    w1 = load_file(tmp_path / "one" / "last" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "last" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    # rank 0 alone wrote the log: one line per epoch
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == 2
