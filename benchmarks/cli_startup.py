"""Start-up benchmark: how long `ct3dzoo --help`, `ct3dzoo list` and `import ct3dzoo` take.

Each command runs in a fresh interpreter (as a user types it), interleaved, ``--repeats``
times; the table gives the median wall time and its ratio to the baseline measured in the
same run: ``python -c "import torch, torchvision"`` (what every command paid before the
CLI stopped importing torch), and the interpreter's own start (``python -c pass``).

Usage: ``python benchmarks/cli_startup.py [--repeats 15]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import torch, torchvision (baseline)": [sys.executable, "-c", "import torch, torchvision"],
    "import ct3dzoo": [sys.executable, "-c", "import ct3dzoo"],
    "ct3dzoo --help": [sys.executable, "-m", "ct3dzoo", "--help"],
    "ct3dzoo list": [sys.executable, "-m", "ct3dzoo", "list"],
    "ct3dzoo info swin3d_t": [sys.executable, "-m", "ct3dzoo", "info", "swin3d_t"],
}
BASELINE = "import torch, torchvision (baseline)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load {load:.2f}, {args.repeats} interleaved runs")  # fmt: skip
    base = statistics.median(times[BASELINE])
    print("| command | median wall (s) | vs. import torch, torchvision |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| `{name}` | {med:.3f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
