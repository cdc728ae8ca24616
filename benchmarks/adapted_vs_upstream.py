"""Adapted 1-channel model vs the upstream RGB model, same grey volume, same run.

For each arch at its native clip size:
- forward: ``model(x)`` (ct3dzoo, 1 channel, normalisation folded in) over
  ``upstream(normalize(x.repeat(1, 3, 1, 1, 1)))`` (what a user of the upstream does);
- load: ``ct3dzoo.load(arch, pretrain=file)`` over the bare upstream builder +
  ``torch.load(weights_only=True)`` + ``load_state_dict`` of the same file.
Ratios < 1 mean ct3dzoo is faster (median of interleaved per-pair ratios, robust to load
drifting on a shared machine). Goals: forward <= 1.0, load <= 1.2.

    python benchmarks/adapted_vs_upstream.py [--archs r3d_18 x3d_m ...] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _upstream import build_upstream, native_input, save_upstream

import ct3dzoo


def _paired_times(fa, fb, repeats: int, sync) -> tuple[float, float, float]:
    """Interleaved a/b timings (so machine load hits both alike): median a, median b and the
    median of the per-pair ratios a/b."""
    fa(), fb()  # warm-up (caches, allocator, bias map)
    sync()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, acc in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            fn()
            sync()
            acc.append(time.perf_counter() - t0)
    ratio = statistics.median(a / b for a, b in zip(ta, tb))
    return statistics.median(ta), statistics.median(tb), ratio


def bench(arch: str, repeats: int, device: str) -> dict:
    cfg = ct3dzoo.get_pretrained_cfg(arch)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    upstream = build_upstream(arch)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "weights.pth"
        save_upstream(upstream, arch, path)

        def load_ours():
            return ct3dzoo.load(arch, pretrain=path, num_classes=0)

        def load_upstream():
            from torchvision.models import video as tvv

            if cfg.publisher == "torchvision":
                m = getattr(tvv, arch)(weights=None)
            else:
                from pytorchvideo.models import hub as pvh

                m = getattr(pvh, arch)(pretrained=False)
            obj = torch.load(path, map_location="cpu", weights_only=True)
            m.load_state_dict(obj.get("model_state", obj))
            return m

        t_load_ours, t_load_up, r_load = _paired_times(
            load_ours, load_upstream, max(1, repeats // 2), lambda: None
        )
        model = load_ours().eval().to(device)
    upstream = upstream.to(device)
    x = native_input(arch).to(device)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1, 1)

    def up_forward():
        rgb = (x.repeat(1, 3, 1, 1, 1) - mean) / std
        if arch.startswith("slowfast"):
            idx = torch.linspace(0, x.shape[2] - 1, x.shape[2] // 4, device=device).long()
            rgb = [rgb.index_select(2, idx), rgb]
        return upstream(rgb)

    with torch.inference_mode():
        t_ours, t_up, r_fwd = _paired_times(lambda: model(x), up_forward, repeats, sync)
    return {
        "arch": arch,
        "size": "x".join(map(str, cfg.input_size[1:])),
        "fwd_ours": t_ours,
        "fwd_up": t_up,
        "load_ours": t_load_ours,
        "load_up": t_load_up,
        "r_fwd": r_fwd,
        "r_load": r_load,
    }


def main(argv: list[str] | None = None) -> int:
    video = [a for a in ct3dzoo.list_models()
             if ct3dzoo.get_pretrained_cfg(a).publisher in ("torchvision", "pytorchvideo")
             and not ct3dzoo.get_pretrained_cfg(a).upstream_arch]  # fmt: skip
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", nargs="*", default=video)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"# adapted_vs_upstream  torch {torch.__version__}  device {args.device} ({dev})  "
          f"threads {torch.get_num_threads()}  repeats {args.repeats}")  # fmt: skip
    print("| arch | native D x H x W | forward ours / upstream | load ours / upstream |")
    print("|---|---|---|---|")
    fwd, load = [], []
    for arch in args.archs:
        r = bench(arch, args.repeats, args.device)
        fwd.append(r["r_fwd"])
        load.append(r["r_load"])
        print(f"| {arch} | {r['size']} | {fwd[-1]:.3f} ({r['fwd_ours'] * 1e3:.0f} / "
              f"{r['fwd_up'] * 1e3:.0f} ms) | {load[-1]:.3f} ({r['load_ours'] * 1e3:.0f} / "
              f"{r['load_up'] * 1e3:.0f} ms) |", flush=True)  # fmt: skip
    print(f"\nworst forward ratio {max(fwd):.3f} (goal <= 1.0); worst load ratio {max(load):.3f} "
          f"(goal <= 1.2); geometric means {statistics.geometric_mean(fwd):.3f} / "
          f"{statistics.geometric_mean(load):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
