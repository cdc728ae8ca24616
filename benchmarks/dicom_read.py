"""DICOM series reading benchmark: one 240-slice 512 x 512 CT series -> HU array.

Readers, same series, same process, files in the page cache (each reader runs once before
timing), rounds interleaved so load changes hit every reader alike; the table gives the
best and the median run of each and their ratios to ct3dzoo (default workers):

- ct3dzoo ``read_dicom_series`` (headers parsed once with only the needed elements, straight
  from the bytes for uncompressed little-endian files; pixel data read by a thread pool
  into one array), with the default workers and with 1;
- SimpleITK ``ImageSeriesReader`` (GDCM), file order from ``GetGDCMSeriesFileNames``;
- naive pydicom: ``dcmread`` every file, sort by position along the normal, stack
  ``pixel_array * slope + intercept``;
- MONAI ``LoadImage`` with ``ITKReader`` (needs ``itk``) and with ``PydicomReader``.

The series is built from the RSNA demo slices in ``../shared/data/rsna-pe-demo`` (cycled,
new positions and UIDs) or, when absent, from a synthetic chest-like slice (pydicom).

Usage: ``python benchmarks/dicom_read.py [--slices 240] [--repeats 5] [--workers 1 2 4 ...]``.
Needs ``pip install 'ct3dzoo[dicom,bench]'`` (SimpleITK, monai, itk-io).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ct3dzoo.data import read_dicom_series

DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsna-pe-demo"


def build_series(folder: Path, n: int) -> str:
    """Write ``n`` 512 x 512 slices 1 mm apart into ``folder``; returns the source used."""
    import pydicom
    from pydicom.uid import CTImageStorage, generate_uid

    sources = sorted(DEMO.glob("*.dcm")) if DEMO.is_dir() else []
    if sources:
        templates = [pydicom.dcmread(f) for f in sources]
        what = f"RSNA demo slices ({len(sources)}, cycled)"
    else:
        from pydicom import examples

        t = examples.ct
        yy, xx = np.mgrid[-1:1:512j, -1:1:512j]
        body = np.where((xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1, 1064, 24).astype(np.int16)
        rng = np.random.default_rng(0)
        t.set_pixel_data((body + rng.integers(0, 60, body.shape)).astype(np.int16),
                         "MONOCHROME2", 16)  # fmt: skip
        t.PixelSpacing = [0.7, 0.7]
        templates = [t]
        what = "synthetic 512x512 slice (pydicom example header)"
    series, study = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        ds = templates[k % len(templates)].copy()
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage  # GDCM needs it
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-124.0, -255.0, -400.0 + 1.0 * k]
        ds.InstanceNumber = n - k
        ds.save_as(folder / f"{generate_uid()[-12:]}.dcm", enforce_file_format=True)
    return what


def naive_pydicom(folder: Path) -> np.ndarray:
    import pydicom

    dss = [pydicom.dcmread(f) for f in folder.iterdir()]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack(
        [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss]
    ).astype(np.float32)


def simpleitk(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(r.Execute())


def monai(reader: str) -> Callable[[Path], np.ndarray]:
    def read(folder: Path) -> np.ndarray:  # imported on first use: a missing MONAI skips the row
        from monai.transforms import LoadImage

        return np.asarray(LoadImage(reader=reader, image_only=True)(str(folder)))

    return read


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=240)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--workers", type=int, nargs="+", default=[1],
        help="extra ct3dzoo rows with these thread counts (default: 1); the first row always "
        "uses the reader's default (the usable cores)",
    )  # fmt: skip
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))

    def ours(workers: int | None) -> Callable[[Path], np.ndarray]:
        return lambda f: read_dicom_series(f, workers=workers).hu

    readers: dict[str, Callable[[Path], np.ndarray]] = {
        f"ct3dzoo read_dicom_series (default workers = {cores} cores)": ours(None),
        **{f"ct3dzoo read_dicom_series (workers={w})": ours(w) for w in args.workers},
        "SimpleITK ImageSeriesReader (GDCM)": simpleitk,
        "naive pydicom (dcmread + pixel_array)": naive_pydicom,
    }
    for name in ("ITKReader", "PydicomReader"):
        readers[f"MONAI LoadImage ({name})"] = monai(name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        what = build_series(folder, args.slices)
        ref = read_dicom_series(folder, workers=1).hu
        times: dict[str, list[float]] = {k: [] for k in readers}
        for name, fn in list(readers.items()):  # warm-up; drop readers that fail
            try:
                out = fn(folder)
                assert np.prod(np.shape(out)) == ref.size, np.shape(out)
            except Exception as e:
                print(f"skipping {name}: {type(e).__name__}: {e}")
                del readers[name], times[name]
        for _ in range(args.repeats):
            for name, fn in readers.items():
                t0 = time.perf_counter()
                fn(folder)
                times[name].append(time.perf_counter() - t0)
    print(
        f"# {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} CPUs | load avg {os.getloadavg()[0]:.2f} | numpy {np.__version__}"
    )
    print(f"# series: {args.slices} x 512 x 512 from {what}; {args.repeats} interleaved runs\n")
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    ours_best, ours_med = next(iter(best.values())), next(iter(med.values()))
    print("| reader | best ms | median ms | best / ct3dzoo best | median / ct3dzoo median |")
    print("|---|---:|---:|---:|---:|")
    for name in best:
        print(
            f"| {name} | {best[name] * 1000:.0f} | {med[name] * 1000:.0f} | "
            f"{best[name] / ours_best:.2f} | {med[name] / ours_med:.2f} |"
        )


if __name__ == "__main__":
    main()
