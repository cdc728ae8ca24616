"""Quickstart: the ten-line story on one synthetic chest CT, then the full demo.

    python examples/quickstart.py                 # the demo's time: docs/benchmarks.md
    python examples/quickstart.py --tiny          # seconds: tiny sizes, one epoch

Works offline: without cached Kinetics weights it says so and uses random weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import ct3dzoo
from ct3dzoo.data import apply_window, read_volume, resample
from ct3dzoo.demo import DEFAULTS, demo
from ct3dzoo.errors import WeightsUnavailableError
from ct3dzoo.phantom import make_phantom_dataset

TINY = {"n_cases": 12, "n_val": 4, "epochs": 1, "shape": (8, 32, 32), "phantom_shape": (16, 64, 64)}


def story(out: Path, arch: str, size: tuple[int, int, int], pretrain: str | None) -> torch.Tensor:
    """Read one CT (a phantom's DICOM series), window it and run a model on it."""
    make_phantom_dataset(out, n=1, seed=0, shape=(2 * size[0], 2 * size[1], 2 * size[2]))
    # --- the ten lines ---------------------------------------------------------------
    vol = read_volume(out / "dicom" / "case_0000")  # HU, (D, H, W), spacing in mm
    vol = resample(vol, shape=size)  # the model's input size
    x = torch.as_tensor(apply_window(vol.hu, "pe"))[None, None]  # (1, 1, D, H, W) in [0, 1]
    try:
        model = ct3dzoo.load(arch, pretrain=pretrain, num_classes=0).eval()
    except WeightsUnavailableError as e:
        print(f"no Kinetics weights here ({str(e).splitlines()[0]}); using random weights")
        model = ct3dzoo.load(arch, pretrain=None, num_classes=0).eval()
    with torch.inference_mode():
        feats = model(x)  # (1, num_features) pre-logits
    # ----------------------------------------------------------------------------------
    print(f"{vol.hu.shape} HU volume at {vol.spacing} mm -> {arch} features {tuple(feats.shape)}")
    return feats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("ct3dzoo-quickstart"))
    p.add_argument("--arch", default=DEFAULTS["arch"], help="the demo's model")
    p.add_argument("--story-arch", default="r3d_18", help="the video model of the ten lines")
    p.add_argument("--tiny", action="store_true", help="tiny sizes and one epoch (for tests)")
    p.add_argument("--no-pretrain", action="store_true", help="random weights")
    args = p.parse_args(argv)
    pretrain = None if args.no_pretrain else "kinetics"
    size = TINY["shape"] if args.tiny else DEFAULTS["shape"]
    story(args.out / "story", args.story_arch, size, pretrain)
    summary = demo(
        out_dir=args.out / "demo", arch=args.arch, pretrain=pretrain, progress=not args.tiny,
        **(TINY if args.tiny else {}),
    )  # fmt: skip
    return 0 if summary["val_auroc"] == summary["val_auroc"] else 1  # NaN: one class only


if __name__ == "__main__":
    sys.exit(main())
