"""`rsna_pe_manifests` on a synthetic tree in the exact RSNA-STR PE Kaggle layout, and the
paper's protocol reading it (study manifest + per-image labels -> labelled slice windows).

Also home of `write_series`, the tiny-DICOM helper the manifest and window tests share.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from ct3dzoo.data import (  # noqa: E402
    RSNA_PE_STUDY_LABELS,
    CTDataset,
    read_manifest,
    read_volume,
    rsna_pe_manifests,
)


def write_series(
    folder: Path, hu: np.ndarray, *, series_uid: str, study_uid: str = "1.2.3",
    name_by_sop: bool = False, seed: int = 0,
) -> list[str]:  # fmt: skip
    """Axial CT slices of ``hu`` (D, H, W; D inferior -> superior, 2 mm apart) in shuffled
    file order; returns the SOPInstanceUIDs in array order."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = [generate_uid() for _ in range(hu.shape[0])]
    for k in np.random.default_rng(seed).permutation(hu.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uids[k]
        ds.Modality = "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * float(k)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.0
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        raw = (hu[k] + 1024).astype(np.uint16)
        ds.set_pixel_data(raw, "MONOCHROME2", 16, generate_instance_uid=False)
        name = f"{uids[k]}.dcm" if name_by_sop else f"IM{(k * 7919) % 1000:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return uids


def has_sop_uids(folder: Path) -> bool:
    return "sop_uids" in read_volume(folder).meta


def make_rsna_tree(root: Path, depths=(10, 7, 12), positives=((3, 4), (), (11,))) -> dict:
    """``root/train.csv`` + ``root/train/<study>/<series>/<sop>.dcm``; per study its truth."""
    rows, truth = [], {}
    for j, (depth, pos) in enumerate(zip(depths, positives)):
        study, series = f"1.2.840.{j}.1", f"1.2.840.{j}.2"
        hu = np.full((depth, 8, 8), -900.0, dtype=np.float32)
        hu[:, 2:6, 2:6] = 40.0 * (np.arange(depth)[:, None, None] + 1)  # slice k: 40 (k+1) HU
        uids = write_series(
            root / "train" / study / series, hu, series_uid=series, study_uid=study,
            name_by_sop=True, seed=j,
        )  # fmt: skip
        labels = [int(k in pos) for k in range(depth)]
        study_vals = {c: 0 for c in RSNA_PE_STUDY_LABELS}
        study_vals["negative_exam_for_pe"] = int(not pos)
        study_vals["rightsided_pe"] = int(bool(pos))
        for k in np.random.default_rng(j).permutation(depth):  # Kaggle rows are not in order
            rows.append({"StudyInstanceUID": study, "SeriesInstanceUID": series,
                         "SOPInstanceUID": uids[k], "pe_present_on_image": labels[k],
                         **study_vals})  # fmt: skip
        truth[study] = {"series": series, "uids": uids, "labels": labels, **study_vals}
    cols = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image",
            *RSNA_PE_STUDY_LABELS]  # fmt: skip
    with open(root / "train.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return truth


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("rsna")
    return root, make_rsna_tree(root)


def _rows(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def test_manifests_from_the_kaggle_layout(tree, tmp_path: Path) -> None:
    root, truth = tree
    man, lab = rsna_pe_manifests(
        root / "train.csv", root / "train", tmp_path / "out",
        study_labels=("pe_present", "rightsided_pe", "negative_exam_for_pe"),
    )  # fmt: skip
    assert (man, lab) == (tmp_path / "out" / "manifest.csv", tmp_path / "out" / "slice_labels.csv")
    rows = _rows(man)
    assert list(rows[0]) == ["id", "path", "series_uid", "group", "pe_present", "rightsided_pe",
                             "negative_exam_for_pe"]  # fmt: skip
    assert [r["id"] for r in rows] == sorted(truth)
    for r in rows:
        t = truth[r["id"]]
        assert Path(r["path"]) == (root / "train" / r["id"] / t["series"]).resolve()
        assert (r["series_uid"], r["group"]) == (t["series"], r["id"])
        assert int(r["pe_present"]) == max(t["labels"])
        assert int(r["rightsided_pe"]) == t["rightsided_pe"]
        assert int(r["negative_exam_for_pe"]) == t["negative_exam_for_pe"]
    got = {(r["id"], r["sop_uid"]): int(r["pe_present_on_image"]) for r in _rows(lab)}
    want = {(s, u): y for s, t in truth.items() for u, y in zip(t["uids"], t["labels"])}
    assert got == want
    # the manifest reads as one: series_uid is reserved, the labels are numbers
    records, cols = read_manifest(man)
    assert cols == ["pe_present", "rightsided_pe", "negative_exam_for_pe"]
    assert [r["series_uid"] for r in records] == [truth[r["id"]]["series"] for r in records]
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes left no temp file


def test_windows_labelled_from_pe_present_on_image(tree, tmp_path: Path) -> None:
    root, truth = tree
    if not has_sop_uids(root / "train" / sorted(truth)[0] / truth[sorted(truth)[0]]["series"]):
        pytest.skip("the DICOM reader does not set meta['sop_uids'] yet (issue #20 point 4)")
    man, lab = rsna_pe_manifests(root / "train.csv", root / "train", tmp_path)
    ds = CTDataset(man, slice_windows=(4, 3), slice_labels=lab, windows=None,
                   cache_dir=tmp_path / "cache")  # fmt: skip
    assert ds.label_columns == ["pe_present_on_image"]
    for i in range(len(ds)):
        item = ds[i]
        t = truth[item["group"]]
        a, b = item["slices"]
        assert item["label"].tolist() == [float(max(t["labels"][a:b]))]
        # slice k holds 40 (k + 1) HU inside: the array order is the reader's
        hu = item["image"][0, : b - a, 4, 4].numpy()
        np.testing.assert_allclose(hu, 40.0 * (np.arange(a, b) + 1))


def test_bad_layouts_are_refused(tree, tmp_path: Path) -> None:
    root, _ = tree
    with pytest.raises(FileNotFoundError, match=r"3 of 3 series folders are not under .*train/"):
        rsna_pe_manifests(root / "train.csv", root, tmp_path)  # the root, not root/train
    with pytest.raises(ValueError, match="study_labels must be"):
        rsna_pe_manifests(root / "train.csv", root / "train", tmp_path, study_labels=("pe",))
    bad = tmp_path / "bad.csv"
    bad.write_text("StudyInstanceUID,SOPInstanceUID\n1,2\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['SeriesInstanceUID'"):
        rsna_pe_manifests(bad, root / "train", tmp_path)
    text = (root / "train.csv").read_text().splitlines()
    head, first = text[0], text[1].split(",")
    first[3] = "yes"
    bad.write_text(head + "\n" + ",".join(first) + "\n")
    with pytest.raises(ValueError, match=r"line 2: pe_present_on_image must be 0 or 1; got 'yes'"):
        rsna_pe_manifests(bad, root / "train", tmp_path)
    assert not (tmp_path / "manifest.csv").exists()  # nothing written on a refused input


def test_max_studies_and_several_series_per_study(tree, tmp_path: Path) -> None:
    root, truth = tree
    text = (root / "train.csv").read_text().splitlines()
    study0 = sorted(truth)[0]
    extra = [ln.replace(truth[study0]["series"], "9.9.9") for ln in text[1:] if study0 in ln]
    two = tmp_path / "two.csv"
    two.write_text("\n".join([*text, *extra]) + "\n")
    man, lab = rsna_pe_manifests(two, root / "train", tmp_path, max_studies=1, check_files=False)
    rows = _rows(man)
    assert [(r["id"], r["group"]) for r in rows] == [
        (f"{study0}_{truth[study0]['series']}", study0), (f"{study0}_9.9.9", study0),
    ]  # fmt: skip
    assert {r["id"] for r in _rows(lab)} == {r["id"] for r in rows}


def test_rsna_example(tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    root, truth = tree
    path = Path(__file__).resolve().parents[1] / "examples" / "rsna_pe_layout.py"
    spec = importlib.util.spec_from_file_location("example_rsna_pe_layout", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    no_sop = not has_sop_uids(root / "train" / sorted(truth)[0] / truth[sorted(truth)[0]]["series"])
    args = [str(root), "--out", str(tmp_path), "--num-slices", "4", "--stride", "3"]
    assert mod.main(args + (["--no-windows"] if no_sop else [])) == 0
    out = capsys.readouterr().out
    assert len(_rows(tmp_path / "manifest.csv")) == 3
    if not no_sop:  # 10, 7, 12 slices; positives at 3-4 (first) and 11 (last study)
        assert "3 series -> 9 windows, 3 positive" in out, out


DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rsna-pe-demo"


@pytest.mark.skipif(not DEMO.is_dir(), reason="../shared/data/rsna-pe-demo absent")
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the demo's short UIDs
def test_real_rsna_slices_in_the_kaggle_layout(tmp_path: Path) -> None:
    """The 12 real RSNA slices (file names random, instance numbers reversed) laid out as
    on Kaggle; one image positive: its windows are, and every slice sits where its
    SOPInstanceUID says."""
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(DEMO.glob("*.dcm"))]
    study, series = heads[0].StudyInstanceUID, heads[0].SeriesInstanceUID
    folder = tmp_path / "train" / study / series
    folder.mkdir(parents=True)
    for f, h in zip(sorted(DEMO.glob("*.dcm")), heads):
        (folder / f"{h.SOPInstanceUID}.dcm").symlink_to(f)
    by_z = sorted(heads, key=lambda h: float(h.ImagePositionPatient[2]))  # inferior first
    positive = by_z[5].SOPInstanceUID
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                    "pe_present_on_image", *RSNA_PE_STUDY_LABELS])  # fmt: skip
        for h in heads:
            w.writerow([study, series, h.SOPInstanceUID, int(h.SOPInstanceUID == positive),
                        0, 0, 0, 1, 1, 0, 0, 0, 0])  # fmt: skip
    man, lab = rsna_pe_manifests(tmp_path / "train.csv", tmp_path / "train", tmp_path / "m",
                                 study_labels=("pe_present", "leftsided_pe"))  # fmt: skip
    assert _rows(man)[0]["pe_present"] == "1" and _rows(man)[0]["leftsided_pe"] == "1"
    if not has_sop_uids(folder):
        pytest.skip("the DICOM reader does not set meta['sop_uids'] yet (issue #20 point 4)")
    ds = CTDataset(man, slice_windows=(4, 4), slice_labels=lab, windows=None,
                   cache_dir=tmp_path / "cache")  # fmt: skip
    assert [(r["slices"], r["labels"]) for r in ds.records] == [
        ((0, 4), [0.0]), ((4, 8), [1.0]), ((8, 12), [0.0])]  # fmt: skip
    item = ds[1]
    for j, h in enumerate(by_z[4:8]):
        raw = pydicom.dcmread(folder / f"{h.SOPInstanceUID}.dcm").pixel_array
        np.testing.assert_array_equal(item["image"][0, j].numpy(), raw.astype(np.float32) - 1024)
