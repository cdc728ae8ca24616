"""Kill-and-resume: a run SIGKILLed mid-epoch and resumed ends with the same history (and
weights) as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_train_common import BlobData, make_model
from ct3dzoo.train import finetune
from ct3dzoo.train.loop import TIMING_KEYS

out, resume, sleep = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
r = finetune(
    make_model(drop=0.3),  # dropout: the training RNG stream must be restored too
    BlobData(32, seed=0, augment=True, sleep=sleep),  # augmentation: per-item seeds
    BlobData(16, seed=1, windows_per_study=2),
    epochs=3, lr=1e-2, batch_size=4, checkpoint_every_steps=1, out_dir=out, resume=resume,
    progress=False, warmup_epochs=0.5,
)
history = [{{k: v for k, v in h.items() if k not in TIMING_KEYS}} for h in r.history]
print(json.dumps({{"history": history, "resumed_from": r.resumed_from,
                  "best_epoch": r.best_epoch, "best_metric": r.best_metric}}))
"""


def _env() -> dict[str, str]:
    root = str(TESTS.parent)
    pp = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": root + (os.pathsep + pp if pp else ""),
        "OMP_NUM_THREADS": "1",
    }


def _run(script: Path, out: Path, *, resume: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, str(script), str(out), "1" if resume else "0", "0"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _position(ckpt: Path) -> tuple[int, int] | None:
    try:
        with safe_open(ckpt / "model.safetensors", framework="pt") as f:
            meta = f.metadata()
        return int(meta["epoch"]), int(meta["batch"])
    except Exception:  # not written yet, or being swapped in
        return None


def test_kill_mid_epoch_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    reference = _run(script, tmp_path / "ref", resume=False)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), "0", "0.02"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            pos = _position(out / "last")
            if pos is not None and pos[0] == 1 and pos[1] >= 2:  # inside the 2nd epoch
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _position(out / "last")
    assert killed_at is not None and killed_at[0] == 1 and killed_at[1] > 0

    resumed = _run(script, out, resume=True)
    assert resumed["resumed_from"] == {"epoch": killed_at[0], "batch": killed_at[1]}
    assert reference["resumed_from"] is None
    assert len(resumed["history"]) == 3
    assert resumed["history"] == reference["history"]  # exact on the same machine
    assert resumed["best_epoch"] == reference["best_epoch"]
    a = load_file(tmp_path / "ref" / "last" / "model.safetensors")
    b = load_file(out / "last" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in log] == [1, 2, 3]
