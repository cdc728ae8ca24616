"""The first run: `ct3dzoo demo` as a new user runs it, timed from the outside.

Runs ``ct3dzoo demo --out DIR --no-progress`` in a subprocess (fresh temporary folder and
weights cache, offline, so it starts from random weights as a first run without internet
does) and prints, per run: wall time (interpreter start to exit), validation AUROC with its
95% interval (bootstrap over the held-out cases, as finetune records it), bytes
left in the output folder, bytes written by the process (``/proc/self/io`` ``wchar``) and
the machine load before and after. The baseline of each column is the target of issue #14
(60 s, AUROC 0.9, 100 MB); the ratio column is measured / target.

    python benchmarks/demo.py [--repeats 2] [-- extra demo arguments]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"wall_s": 60.0, "val_auroc": 0.9, "folder_mb": 100.0}

# runs the CLI exactly as `ct3dzoo demo ...`, then reports the process's own write counter
_CHILD = """
import sys
from ct3dzoo.cli import main
rc = main(sys.argv[1:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print("@@io", int(io["wchar"]), file=sys.stderr)
sys.exit(rc)
"""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_once(extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ct3dzoo-demo-bench-") as tmp:
        out = Path(tmp) / "demo"
        env = {**os.environ, "CT3DZOO_HOME": str(Path(tmp) / "home"), "CT3DZOO_OFFLINE": "1"}
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", _CHILD, "demo", "--out", str(out),
             "--no-progress", *extra],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"the demo failed (exit {proc.returncode})")
        sys.stdout.write(proc.stdout)
        io_line = next(x for x in proc.stderr.splitlines() if x.startswith("@@io"))
        wchar = int(io_line.split()[1])
        summary = json.loads((out / "summary.json").read_text())
        return {
            "wall_s": wall,
            "val_auroc": float(summary["val_auroc"]),
            # 95% interval, stratified bootstrap over the held-out cases (finetune's record)
            "ci_low": float((summary["val_auroc_ci"] or [math.nan])[0]),
            "ci_high": float((summary["val_auroc_ci"] or [math.nan, math.nan])[1]),
            "folder_mb": _folder_bytes(out) / 1e6,
            "wchar_mb": wchar / 1e6,
            "train_s": float(summary["train_s"]),
            "load_before": load_before,
            "load_after": load_after,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("extra", nargs="*", help="extra `ct3dzoo demo` arguments (after --)")
    args = p.parse_args(argv)
    import torch

    print(
        f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    print(f"command: ct3dzoo demo --out TMP --no-progress {' '.join(args.extra)}".rstrip())
    runs = []
    for i in range(args.repeats):
        print(f"--- run {i + 1}/{args.repeats}", flush=True)
        r = run_once(args.extra)
        runs.append(r)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    print("\n| run | wall s | vs 60 s | train s | val AUROC (95% CI) | vs 0.9 | folder MB | vs 100 MB "
          "| process wrote MB | load 1-min before / after |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        print(
            f"| {i} | {r['wall_s']:.1f} | {r['wall_s'] / TARGETS['wall_s']:.2f} | "
            f"{r['train_s']:.1f} | {r['val_auroc']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f}) | "
            f"{r['val_auroc'] / TARGETS['val_auroc']:.2f} | {r['folder_mb']:.1f} | "
            f"{r['folder_mb'] / TARGETS['folder_mb']:.2f} | {r['wchar_mb']:.0f} | "
            f"{r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
