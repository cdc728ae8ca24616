"""Preprocessing benchmark: HU volume (N x 512 x 512) -> windowed (D x 224 x 224) in [0, 1].

Three implementations of the same function (resize in-plane to 256 with area averaging,
depth to D with area averaging, pe window [-100, 900] HU, centre crop 224), same input,
same process:

- ct3dzoo: ``Compose([CenterCrop((None, 448, 448)), Resize((D, 224, 224)), Window("pe")])``
  (cropping first is exact for a 2x area resize, so no voxel outside the crop is touched).
- MONAI: ``Resize((D, 256, 256), mode="area") -> ScaleIntensityRange(clip) ->
  CenterSpatialCrop((D, 224, 224))``; also MONAI with ct3dzoo's order for reference.
- paper: per-slice numpy + OpenCV (``cv2.resize(INTER_AREA)`` to 256, window, crop 224),
  then depth averaged to D with numpy. It windows each slice before the depth average, so
  it differs from the other two where neighbouring slices straddle a window edge.

Usage: ``python benchmarks/preprocess.py [--depth 128] [--repeats 5] [--device cpu]``.
Needs ``pip install 'ct3dzoo[bench]'`` (monai, opencv-python-headless).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from ct3dzoo.data import WINDOWS
from ct3dzoo.data.transforms import CenterCrop, Compose, Resize, Window

LO, HI = WINDOWS["pe"][0] - WINDOWS["pe"][1] / 2, WINDOWS["pe"][0] + WINDOWS["pe"][1] / 2


def make_volume(depth: int, seed: int = 0) -> np.ndarray:
    """Chest-like HU volume: body ellipse (~40 HU) with lungs (~-850) and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:512j, -1:1:512j]
    body = (xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1
    lungs = ((np.abs(xx) - 0.4) / 0.28) ** 2 + (yy / 0.45) ** 2 < 1
    sl = np.where(body, 40.0, -1000.0) + np.where(lungs, -890.0, 0.0)
    vol = sl[None] + rng.normal(0, 60, (depth, 512, 512))
    return vol.astype(np.float32)


def ct3dzoo_chain(d: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return Compose([CenterCrop((None, 448, 448)), Resize((d, 224, 224)), Window("pe")])


def monai_chain(d: int, fused_order: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    from monai.transforms import CenterSpatialCrop, Compose, Resize, ScaleIntensityRange

    window = ScaleIntensityRange(a_min=LO, a_max=HI, b_min=0.0, b_max=1.0, clip=True)
    if fused_order:
        return Compose(
            [CenterSpatialCrop((-1, 448, 448)), Resize((d, 224, 224), mode="area"), window]
        )
    return Compose([Resize((d, 256, 256), mode="area"), window, CenterSpatialCrop((d, 224, 224))])


def paper_pipeline(vol: np.ndarray, d: int) -> np.ndarray:
    import cv2

    out = np.empty((vol.shape[0], 224, 224), np.float32)
    for k in range(vol.shape[0]):  # the paper's per-slice loop
        s = cv2.resize(vol[k], (256, 256), interpolation=cv2.INTER_AREA)
        s = np.clip((s - LO) / (HI - LO), 0, 1)
        out[k] = s[16:240, 16:240]
    return out.reshape(d, vol.shape[0] // d, 224, 224).mean(1)[None]


def timeit(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Best-of-``repeats`` seconds per function, runs interleaved so load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v[1:]) for k, v in times.items()}  # first round is warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=128, help="input slices N")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (torch and cv2)")
    args = ap.parse_args()

    import cv2
    import monai

    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    vol = make_volume(args.depth)
    x = torch.from_numpy(vol).unsqueeze(0).to(dev)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none"
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"cv2 threads {cv2.getNumThreads()}, device {dev} (GPU: {gpu})\n"
        f"# torch {torch.__version__}, monai {monai.__version__}, opencv {cv2.__version__}, "
        f"numpy {np.__version__}, python {platform.python_version()}\n"
        f"# input (1, {args.depth}, 512, 512) float32 HU; best of {args.repeats} interleaved runs"
    )
    print(
        f"{'output':<14} {'ct3dzoo ms':>10} {'MONAI ms':>9} {'MONAI same-order ms':>20} "
        f"{'paper ms':>9} {'vs MONAI':>9} {'vs paper':>9} {'|diff| MONAI':>13} {'|diff| paper':>13}"
    )
    with torch.inference_mode():
        for d in (32, 64):
            ours = ct3dzoo_chain(d)
            mon, mon2 = monai_chain(d, False), monai_chain(d, True)
            a = ours(x)
            b = torch.as_tensor(mon(x)).to(dev)
            c = torch.as_tensor(paper_pipeline(vol, d)).to(dev)
            assert a.shape == b.shape == c.shape == (1, d, 224, 224), (a.shape, b.shape, c.shape)
            d_mon, d_pap = (a - b).abs().max().item(), (a - c).abs().max().item()
            t = timeit(
                {
                    "ours": lambda o=ours: o(x),
                    "monai": lambda m=mon: m(x),
                    "monai2": lambda m=mon2: m(x),
                    "paper": lambda d=d: paper_pipeline(vol, d),
                },
                args.repeats,
                sync,
            )
            t_ours, t_mon, t_mon2, t_pap = t["ours"], t["monai"], t["monai2"], t["paper"]
            print(
                f"{d}x224x224{'':<5} {t_ours * 1e3:>10.1f} {t_mon * 1e3:>9.1f} "
                f"{t_mon2 * 1e3:>20.1f} {t_pap * 1e3:>9.1f} {t_mon / t_ours:>8.1f}x "
                f"{t_pap / t_ours:>8.1f}x {d_mon:>13.1e} {d_pap:>13.1e}"
            )


if __name__ == "__main__":
    main()
