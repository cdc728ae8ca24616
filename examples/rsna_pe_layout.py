"""RSNA-STR PE (Kaggle) layout -> study manifest + slice labels -> labelled slice windows.

    python examples/rsna_pe_layout.py /data/rsna-pe --out rsna-manifests/ --max-studies 20

``ROOT`` holds the competition's ``train.csv`` and ``train/<StudyInstanceUID>/
<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. Writes ``manifest.csv`` (one row per series:
id, path, series_uid, group, pe_present and the chosen study labels) and
``slice_labels.csv`` (id, sop_uid, pe_present_on_image) under ``--out``, then (unless
``--no-windows``) reads every series once into ``--out/cache`` and prints how many
32-slice windows (every 24 slices) there are and how many are positive: the training items
of the paper's protocol (``examples/paper_protocol.py --rsna ROOT`` trains on them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ct3dzoo.data import RSNA_PE_STUDY_LABELS, CTDataset, rsna_pe_manifests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path, help="folder with train.csv and train/")
    p.add_argument("--out", type=Path, default=Path("rsna-manifests"))
    p.add_argument("--max-studies", type=int, help="first N studies (by StudyInstanceUID)")
    p.add_argument("--study-labels", nargs="+", default=["pe_present"],
                   choices=["pe_present", *RSNA_PE_STUDY_LABELS])  # fmt: skip
    p.add_argument("--num-slices", type=int, default=32)
    p.add_argument("--stride", type=int, default=24)
    p.add_argument("--no-windows", action="store_true", help="only write the two CSVs")
    args = p.parse_args(argv)

    manifest, slice_labels = rsna_pe_manifests(
        args.root / "train.csv", args.root / "train", args.out,
        study_labels=args.study_labels, max_studies=args.max_studies,
    )  # fmt: skip
    print(f"wrote {manifest} and {slice_labels}")
    if args.no_windows:
        return 0
    windows = CTDataset(
        manifest, slice_windows=(args.num_slices, args.stride), slice_labels=slice_labels,
        cache_dir=args.out / "cache",
    )  # fmt: skip
    positive = sum(r["labels"][0] > 0 for r in windows.records)
    print(f"{len(windows.studies)} series -> {len(windows)} windows, {positive} positive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
