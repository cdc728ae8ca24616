"""Tests of the synthetic chest-CT phantom (`ct3dzoo.phantom`): anatomy, findings, masks, files."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from ct3dzoo.phantom import (
    TISSUE_LABELS,
    PhantomCase,
    default_spacing,
    make_chest_phantom,
    make_phantom_dataset,
    nifti_affine,
)

T = TISSUE_LABELS


def _median(case: PhantomCase, name: str) -> float:
    m = case.tissue == T[name]
    assert m.any(), name
    return float(np.median(case.hu[m]))


@pytest.fixture(scope="module")
def case0() -> PhantomCase:
    return make_chest_phantom(seed=0, finding=False)


def test_shape_dtype_spacing(case0: PhantomCase) -> None:
    assert case0.hu.shape == (48, 128, 128) and case0.hu.dtype == np.float32
    assert case0.tissue.shape == case0.hu.shape and case0.tissue.dtype == np.uint8
    assert case0.spacing == (5.0, 2.8125, 2.8125) == default_spacing((48, 128, 128))
    assert case0.hu.min() >= -1024 and case0.hu.max() <= 3071
    assert np.array_equal(case0.hu, np.rint(case0.hu))  # integer HU like a scanner
    assert case0.label == 0 and case0.finding is None and case0.seed == 0


def test_deterministic_by_seed(case0: PhantomCase) -> None:
    again = make_chest_phantom(seed=0, finding=False)
    assert np.array_equal(case0.hu, again.hu) and np.array_equal(case0.tissue, again.tissue)
    other = make_chest_phantom(seed=1, finding=False)
    assert not np.array_equal(case0.hu, other.hu)
    assert np.abs(case0.hu - other.hu).mean() > 10.0
    a, b = make_chest_phantom(seed=7), make_chest_phantom(seed=7)  # random finding too
    assert a.label == b.label and a.finding == b.finding and np.array_equal(a.hu, b.hu)


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_tissue_hu_ranges(seed: int) -> None:
    c = make_chest_phantom(seed=seed)
    assert abs(_median(c, "air") + 1000) <= 15
    assert abs(np.median(c.hu[:, :4, :4]) + 1000) <= 15  # a corner of the field of view
    assert -950 <= _median(c, "lung") <= -750
    assert 250 <= _median(c, "vessel") <= 350
    assert -130 <= _median(c, "fat") <= -70
    assert 20 <= _median(c, "soft") <= 70
    bone = c.hu[c.tissue == T["bone"]]
    assert np.median(bone) >= 400 and (bone >= 400).mean() > 0.9
    # the noise is CT-like: 10..20 HU std in uniform air far from the body
    assert 8 <= c.hu[:, :6, :6].std() <= 25


def test_anatomy_varies_along_z(case0: PhantomCase) -> None:
    lung = (case0.tissue == T["lung"]).sum(axis=(1, 2))
    D = case0.shape[0]
    # lungs taper toward the apex (top slices) and the heart sits in the lower half
    assert lung[int(0.9 * D) :].mean() < 0.6 * lung[int(0.4 * D) : int(0.7 * D)].mean()
    assert lung[-1] < lung.max() * 0.3
    assert (case0.tissue == T["vessel"]).any(axis=(1, 2)).sum() > D // 2  # aorta runs along z
    assert (case0.tissue == T["bone"]).any(axis=(1, 2)).all()  # spine/ribs on every slice


@pytest.mark.parametrize("seed", range(4))
def test_nodule_present_iff_label(seed: int) -> None:
    pos = make_chest_phantom(seed=seed, finding=True, finding_kind="nodule")
    neg = make_chest_phantom(seed=seed, finding=False)
    assert pos.label == 1 and pos.finding is not None and pos.finding.kind == "nodule"
    assert neg.label == 0 and neg.finding is None and not (neg.tissue == T["finding"]).any()
    f = pos.finding
    assert 5.0 <= f.radius_mm <= 10.0 and 20.0 <= f.hu <= 60.0
    # distance (mm) of every voxel from the nodule centre
    idx = np.indices(pos.shape, dtype=np.float32)
    dist = np.sqrt(sum(((idx[k] - f.centre[k]) * pos.spacing[k]) ** 2 for k in range(3)))
    core = dist <= 0.5 * f.radius_mm + 1.0
    shell = (dist >= f.radius_mm + 4.0) & (dist <= f.radius_mm + 9.0)
    assert core.any() and (pos.tissue[core] == T["finding"]).all()
    assert np.median(pos.hu[core]) > -150  # solid nodule ...
    assert np.median(pos.hu[shell]) < -600  # ... surrounded by aerated lung
    assert np.median(neg.hu[core]) < -600  # same spot in the negative twin is lung
    # it spans more than one slice and is a small blob, not a slab
    slices = np.unique(np.nonzero(pos.tissue == T["finding"])[0])
    assert 2 <= slices.size <= 6


@pytest.mark.parametrize("seed", range(3))
def test_embolus_is_filling_defect(seed: int) -> None:
    c = make_chest_phantom(seed=seed, finding=True, finding_kind="embolus")
    assert c.label == 1 and c.finding is not None and c.finding.kind == "embolus"
    m = c.tissue == T["finding"]
    assert m.sum() >= 6
    assert np.median(c.hu[m]) < 150 < 250 < _median(c, "vessel")
    ctr = tuple(round(v) for v in c.finding.centre)
    assert c.tissue[ctr] == T["finding"]


def test_random_finding_mixes_labels() -> None:
    labels = [make_chest_phantom(seed=s, shape=(16, 48, 48)).label for s in range(16)]
    assert 0 < sum(labels) < 16


def test_other_grids() -> None:
    small = make_chest_phantom(seed=2, shape=(16, 64, 64), finding=True)
    assert small.hu.shape == (16, 64, 64) and small.spacing == (15.0, 5.625, 5.625)
    fine = make_chest_phantom(seed=2, shape=(24, 96, 96), spacing=(2.5, 0.7, 0.7))
    assert fine.spacing == (2.5, 0.7, 0.7)
    assert -950 <= _median(fine, "lung") <= -750
    with pytest.raises(ValueError, match="finding_kind"):
        make_chest_phantom(finding_kind="tumour")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spacing"):
        make_chest_phantom(spacing=(1.0, -1.0, 1.0))


def test_fast() -> None:
    make_chest_phantom(seed=0)
    best = min(_timed(s) for s in range(3))
    assert best < 0.5, f"{best:.3f} s per 48x128x128 case"


def _timed(seed: int) -> float:
    t = time.perf_counter()
    make_chest_phantom(seed=seed, finding=True)
    return time.perf_counter() - t


# ---------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("pydicom")
    pytest.importorskip("nibabel")
    out = tmp_path_factory.mktemp("phantoms")
    return make_phantom_dataset(out, n=4, seed=5, shape=(20, 64, 64))


def _cases(manifest: Path) -> list[dict]:
    return json.loads((manifest.parent / "cases.json").read_text())


def _regen(c: dict) -> PhantomCase:
    return make_chest_phantom(shape=c["shape"], seed=c["seed"], finding=bool(c["label"]))


def test_manifest_and_balance(dataset: Path) -> None:
    assert dataset.name == "manifest.csv"
    with open(dataset, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "group"]
    assert [r["path"] for r in rows] == [f"dicom/case_{i:04d}" for i in range(4)]
    assert sum(int(r["label"]) for r in rows) == 2
    assert len({r["group"] for r in rows}) == 4
    for fmt, suffix in (("dicom", ""), ("nifti", ".nii.gz")):
        with open(dataset.parent / f"manifest_{fmt}.csv", newline="") as fh:
            rf = list(csv.DictReader(fh))
        assert [r["label"] for r in rf] == [r["label"] for r in rows]
        for r in rf:
            assert (dataset.parent / r["path"]).exists() and r["path"].endswith(suffix)
    assert not list(dataset.parent.rglob("*.tmp"))  # no temporaries left by the atomic writes
    cases = _cases(dataset)
    assert [c["label"] for c in cases] == [int(r["label"]) for r in rows]
    assert all((c["finding"] is None) == (c["label"] == 0) for c in cases)
    big = make_phantom_dataset(
        dataset.parent / "bal",
        n=10,
        seed=1,
        shape=(8, 32, 32),
        formats=("nifti",),
        positive_fraction=0.3,
    )
    with open(big, newline="") as fh:
        assert sum(int(r["label"]) for r in csv.DictReader(fh)) == 3


def test_dataset_deterministic(dataset: Path, tmp_path: Path) -> None:
    again = make_phantom_dataset(tmp_path, n=4, seed=5, shape=(20, 64, 64), formats=("nifti",))
    assert _cases(again) == _cases(dataset)
    assert again.read_text() == (dataset.parent / "manifest_nifti.csv").read_text()


def test_dataset_workers_write_the_same_files(dataset: Path, tmp_path: Path) -> None:
    """Two worker processes write byte-identical files (DICOM: identical pixel data and
    headers; only the files' own write order differs) and the same manifests."""
    pydicom = pytest.importorskip("pydicom")
    again = make_phantom_dataset(tmp_path, n=4, seed=5, shape=(20, 64, 64), workers=2)
    assert _cases(again) == _cases(dataset)
    ours, theirs = dataset.parent, again.parent
    files = sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    assert len(files) == 4 * 20 + 4 + 4 + 4  # slices, NIfTIs, masks, cases.json + 3 manifests
    for rel in files:
        if rel.suffix == ".dcm":
            a, b = pydicom.dcmread(ours / rel), pydicom.dcmread(theirs / rel)
            assert a == b and a.PixelData == b.PixelData, rel
        else:
            assert (ours / rel).read_bytes() == (theirs / rel).read_bytes(), rel
    with pytest.raises(ValueError, match="workers"):
        make_phantom_dataset(tmp_path / "x", n=2, seed=0, workers=0)


def test_dicom_roundtrip_pydicom(dataset: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    case = _regen(_cases(dataset)[1])
    files = sorted((dataset.parent / "dicom" / "case_0001").glob("*.dcm"))
    assert len(files) == case.shape[0]
    dss = [pydicom.dcmread(f) for f in files]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    z = np.array([float(d.ImagePositionPatient[2]) for d in dss])
    assert np.allclose(np.diff(z), case.spacing[0])
    assert len({d.SeriesInstanceUID for d in dss}) == 1
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)
    for k, d in enumerate(dss):
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert d.SOPClassUID == pydicom.uid.CTImageStorage and d.Modality == "CT"
        assert [float(v) for v in d.PixelSpacing] == list(case.spacing[1:])
        assert float(d.SliceThickness) == case.spacing[0]
        assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert d.PatientID.startswith("ct3dzoo-phantom-")
        hu = d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        assert np.abs(hu - case.hu[k]).max() <= 1.0
    # craniocaudal numbering, like a scanner: instance 1 is the top slice
    assert dss[-1].InstanceNumber == 1
    other = pydicom.dcmread(next((dataset.parent / "dicom" / "case_0002").glob("*.dcm")))
    assert other.SeriesInstanceUID != dss[0].SeriesInstanceUID


def test_nifti_roundtrip_nibabel(dataset: Path) -> None:
    nib = pytest.importorskip("nibabel")
    case = _regen(_cases(dataset)[0])
    img = nib.load(dataset.parent / "nifti" / "case_0000.nii.gz")
    data = np.asarray(img.dataobj).transpose(2, 1, 0)
    assert np.abs(data - case.hu).max() <= 1.0
    assert np.allclose(img.header.get_zooms(), case.spacing[::-1])
    assert np.allclose(img.affine, nifti_affine(case))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # third axis runs to superior


def test_readers_roundtrip(dataset: Path) -> None:
    data = pytest.importorskip("ct3dzoo.data", reason="ct3dzoo.data readers not available")
    if not hasattr(data, "read_dicom_series") or not hasattr(data, "read_volume"):
        pytest.skip("ct3dzoo.data.read_dicom_series/read_volume not available yet")
    for c in _cases(dataset)[:2]:
        case = _regen(c)
        for vol in (
            data.read_dicom_series(dataset.parent / "dicom" / c["case"]),
            data.read_volume(dataset.parent / "nifti" / f"{c['case']}.nii.gz"),
        ):
            assert vol.hu.shape == case.shape
            assert np.abs(vol.hu - case.hu).max() <= 1.0
            assert np.allclose(vol.spacing, case.spacing)
            assert np.allclose(vol.origin, case.origin, atol=1e-3)
    if hasattr(data, "read_manifest"):
        records, cols = data.read_manifest(dataset)
        assert cols == ["label"] and [r["labels"] for r in records] == [
            [float(c["label"])] for c in _cases(dataset)
        ]
        assert all(Path(r["path"]).is_dir() for r in records)


def test_lung_vessel_and_nodule_hu_knobs() -> None:
    """The contrast knobs change only what they name; their defaults reproduce the phantom."""
    base = make_chest_phantom(shape=(24, 64, 64), seed=5, finding=True)
    same = make_chest_phantom(
        shape=(24, 64, 64), seed=5, finding=True, lung_vessel_hu=750.0, nodule_hu=(20.0, 60.0)
    )
    assert np.array_equal(base.hu, same.hu)
    smooth = make_chest_phantom(
        shape=(24, 64, 64), seed=5, finding=True, lung_vessel_hu=300.0, nodule_hu=(100.0, 100.0)
    )
    lung = (base.tissue == T["lung"]) & (smooth.tissue == T["lung"])
    assert np.percentile(smooth.hu[lung], 99) < np.percentile(base.hu[lung], 99) - 100
    assert smooth.finding is not None and smooth.finding.hu == 100.0


# ---------------------------------------------------------------------------- pinned output

#: sha256 (first 16 hex digits) of ``hu`` as int16 and of ``tissue``, the HU sum and the finding
#: of small cases, computed with ``ct3dzoo.data.synthetic`` before it moved to
#: ``ct3dzoo.phantom`` (numpy 2.4, x86-64): the same seed must keep giving the same arrays.
PINNED = [
    ({"seed": 0, "finding": False}, "845655b60ffabdca", "0a9302a1c4026653", -42324733, None),
    (
        {"seed": 3, "finding": True, "finding_kind": "nodule"},
        "2a8e77fc7e2a82c2",
        "580e8d4af826ee63",
        -41754070,
        ("nodule", (9.337027616961203, 33.88334118021248, 18.981925209416886), 6.261121053865702),
    ),
    (
        {"seed": 5, "finding": True, "finding_kind": "embolus"},
        "a17580b67a086e7b",
        "a68054619712dacd",
        -42144679,
        ("embolus", (9.019378687114903, 28.101744684263032, 30.130567568505093), 9.030234632348728),
    ),
    (
        {"seed": 4, "finding": True, "nodule_radius_mm": (18.0, 28.0), "lung_vessel_hu": 300.0},
        "d44955ca0eda41b2",
        "0489353d0dd05204",
        -45351378,
        ("nodule", (11.405296280271736, 27.478413097551996, 21.25867149379781), 26.860696731416212),
    ),
]


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize(("kwargs", "hu_sha", "tissue_sha", "hu_sum", "finding"), PINNED)
def test_same_seed_same_arrays_as_before_the_move(
    kwargs: dict, hu_sha: str, tissue_sha: str, hu_sum: int, finding: tuple | None
) -> None:
    c = make_chest_phantom(shape=(16, 64, 64), **kwargs)
    assert int(c.hu.astype(np.int64).sum()) == hu_sum
    assert _sha(c.hu.astype(np.int16)) == hu_sha and _sha(c.tissue) == tissue_sha
    if finding is None:
        assert c.finding is None
    else:
        assert (c.finding.kind, c.finding.centre, c.finding.radius_mm) == finding


def test_dataset_seeds_as_before_the_move(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    make_phantom_dataset(tmp_path, n=3, seed=5, shape=(16, 48, 48), formats=("nifti",))
    cases = _cases(tmp_path / "manifest.csv")
    assert [(c["seed"], c["label"]) for c in cases] == [
        (1345020871, 1),
        (831260299, 1),
        (853345059, 0),
    ]
    data = np.asarray(nib.load(tmp_path / "nifti" / "case_0001.nii.gz").dataobj)
    assert _sha(data) == "8b7274ed373eb43a"


# ---------------------------------------------------------------------------- lesion masks


@pytest.mark.parametrize(("kind", "seed"), [("nodule", 3), ("nodule", 8), ("embolus", 5)])
def test_mask_covers_the_painted_finding(kind: str, seed: int) -> None:
    c = make_chest_phantom(shape=(24, 96, 96), seed=seed, finding=True, finding_kind=kind)
    twin = make_chest_phantom(shape=(24, 96, 96), seed=seed, finding=False)
    m = c.mask.astype(bool)
    assert c.mask.dtype == np.uint8 and c.mask.shape == c.shape and m.sum() >= 6
    assert set(np.unique(c.mask)) == {0, 1}
    # the finding's centre is in the mask; the mask is the only place the twins differ in tissue
    assert m[tuple(round(v) for v in c.finding.centre)]
    assert np.array_equal(c.tissue != twin.tissue, m & (c.tissue != twin.tissue))
    # the mask is where the finding dominates the voxel's partial volume: there the HU moved
    # more than half way from what the negative twin has to the finding's attenuation
    before = np.median(twin.hu[m])
    moved = (np.median(c.hu[m]) - before) / (c.finding.hu - before)
    assert 0.5 < moved <= 1.1, moved
    # and it stands out from what surrounds it, as designed: aerated lung round a nodule,
    # contrast-filled blood round an embolus
    host = T["lung"] if kind == "nodule" else T["vessel"]
    ring = _dilate(m, 2) & ~_dilate(m, 1) & (c.tissue == host)
    assert ring.sum() >= 4
    around = np.median(c.hu[ring])
    if kind == "nodule":
        assert around < -500 and before < -500
    else:
        assert around > 200 and before > 200
    assert abs(np.median(c.hu[m]) - around) > 150


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    for axis in range(3):
        for _ in range(r):
            out = out | np.roll(out, 1, axis) | np.roll(out, -1, axis)
    return out


def test_negative_case_mask_is_empty(case0: PhantomCase) -> None:
    assert case0.mask.shape == case0.shape and not case0.mask.any()


def test_dataset_writes_masks_aligned_with_volumes(dataset: Path) -> None:
    data = pytest.importorskip("ct3dzoo.data")
    cases = _cases(dataset)
    assert [c["mask"] for c in cases] == [f"masks/case_{i:04d}.nii.gz" for i in range(4)]
    for c in cases:
        mask = data.read_volume(dataset.parent / c["mask"])
        case = _regen(c)
        assert np.array_equal(mask.hu, case.mask) and np.allclose(mask.spacing, case.spacing)
        assert mask.hu.any() == bool(c["label"])
        if c["label"]:
            # read back through both readers, the mask marks the finding's HU
            for vol in (
                data.read_volume(dataset.parent / "dicom" / c["case"]),
                data.read_volume(dataset.parent / "nifti" / f"{c['case']}.nii.gz"),
            ):
                m = mask.hu > 0
                assert np.array_equal(vol.hu[m], case.hu[m])
                assert (
                    np.median(vol.hu[m]) - np.median(vol.hu[_dilate(m, 2) & ~_dilate(m, 1)]) > 150
                )


def test_dataset_without_masks(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    make_phantom_dataset(tmp_path, n=2, seed=1, shape=(8, 32, 32), formats=("nifti",), masks=False)
    assert not (tmp_path / "masks").exists()
    assert all(c["mask"] is None for c in _cases(tmp_path / "manifest.csv"))


# ---------------------------------------------------------------------------- layering


def test_phantom_sits_above_data() -> None:
    """ct3dzoo.data never imports the phantom (also not inside functions); the phantom's
    modules stay small."""
    import ast

    import ct3dzoo.data
    import ct3dzoo.phantom

    for path in Path(ct3dzoo.data.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("phantom" in n or "synthetic" in n for n in names), (path, names)
    for path in Path(ct3dzoo.phantom.__file__).parent.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path
