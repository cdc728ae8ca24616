"""`prepare(workers>1)` from a plain script with no main guard, even with the spawn start
method forced (issue 21, point 5): the workers are threads, so nothing re-runs the script."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from ct3dzoo.data import CTVolume, prepare

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import multiprocessing
    multiprocessing.set_start_method("spawn", force=True)  # what macOS/Windows default to

    from ct3dzoo.data import prepare

    print("script body ran")  # printed once: no worker re-imports this script
    res = prepare("manifest.csv", "cache", shape=(4, 8, 8), workers=3, progress=False)
    print(f"{len(res.written)} written, {len(res.failed)} failed")
    """
)


def test_prepare_workers_from_a_script_without_main_guard(tmp_path: Path) -> None:
    rows = ["path,id"]
    for i in range(6):
        hu = np.random.default_rng(i).integers(-1024, 1500, (6, 10, 12)).astype(np.float32)
        CTVolume(hu, spacing=(2.0, 0.8, 0.8)).save_npz(str(tmp_path / f"s{i}.npz"))
        rows.append(f"s{i}.npz,s{i}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("script body ran") == 1
    assert "6 written, 0 failed" in proc.stdout
    # same bytes as one at a time
    one = prepare(tmp_path / "manifest.csv", tmp_path / "one", shape=(4, 8, 8), progress=False)
    for key in one.written:
        a = np.load(tmp_path / "cache" / "studies" / key / "hu.npy")
        np.testing.assert_array_equal(a, np.load(tmp_path / "one" / "studies" / key / "hu.npy"))
