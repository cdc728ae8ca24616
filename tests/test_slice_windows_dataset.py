"""`CTDataset(slice_windows=, slice_labels=)`: the paper's window protocol as a dataset.

Windows are exactly `predict_study`'s, labels the max over a window's slices (by slice index
or SOPInstanceUID), a window of a prepared cache reads only its slices, and finetune's
``val_study_auroc`` is the AUROC of predict_study's max-over-windows study scores.
"""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from test_rsna_layout import has_sop_uids, write_series
from test_train_common import make_model
from torchmetrics.functional.classification import binary_auroc

from ct3dzoo import predict_study
from ct3dzoo.data import (
    CTDataset,
    CTVolume,
    prepare,
    read_slice_labels,
    read_volume,
    resample_slice_labels,
    slice_window_bounds,
    stack_windows,
)
from ct3dzoo.train import aggregate_by_group, finetune

DEPTHS = {"a": 20, "b": 8, "c": 5, "d": 13}  # longer, equal to and shorter than a window
WIN = (8, 6)


def make_studies(folder: Path, depths=DEPTHS, seed: int = 0, hw: int = 12) -> Path:
    """npz studies of noise in HU; slice k of each study has mean 10 k HU. Returns m.csv."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,id,y"]
    for j, (sid, d) in enumerate(depths.items()):
        hu = rng.uniform(-400, 600, (d, hw, hw)).astype(np.float32)
        hu += 10.0 * np.arange(d, dtype=np.float32)[:, None, None]
        CTVolume(hu, spacing=(2.0, 1.0, 1.0)).save_npz(folder / f"{sid}.npz")
        rows.append(f"{sid}.npz,{sid},{j % 2}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def write_labels(path: Path, rows: list[dict], key: str = "slice") -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", key, "pe"])
        w.writeheader()
        w.writerows(rows)
    return path


def slice_rows(positive: dict[str, set[int]], depths=DEPTHS) -> list[dict]:
    return [{"id": s, "slice": k, "pe": int(k in positive.get(s, ()))}
            for s, d in depths.items() for k in range(d)]  # fmt: skip


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_studies(tmp_path_factory.mktemp("studies"))


def test_windows_are_predict_studys_and_carry_the_study(studies: Path) -> None:
    ds = CTDataset(studies, slice_windows=WIN, windows="pe")
    want = [(s, b) for s, d in DEPTHS.items() for b in slice_window_bounds(d, *WIN, "shift")]
    assert len(ds) == len(want) == 3 + 1 + 1 + 2
    for i, (sid, (a, b)) in enumerate(want):
        item = ds[i]
        assert (item["id"], item["group"], item["slices"]) == (f"{sid}[{a}:{b}]", sid, (a, b))
        assert item["image"].shape == (1, 8, 12, 12)
        assert item["label"].tolist() == [float(list(DEPTHS).index(sid) % 2)]  # the study's
        hu = torch.from_numpy(read_volume(studies.parent / f"{sid}.npz").hu[a:b])
        expect = stack_windows(hu, "pe")
        torch.testing.assert_close(item["image"][:, : b - a], expect, rtol=0, atol=0)
        assert not item["image"][:, b - a :].any()  # c (5 slices): padded with 0 after windowing


def test_window_label_is_the_max_over_its_slices(studies: Path, tmp_path: Path) -> None:
    pos = {"a": {13}, "c": {0}, "d": {5, 6}}
    lab = write_labels(tmp_path / "l.csv", slice_rows(pos))
    ds = CTDataset(studies, slice_windows=WIN, slice_labels=lab)
    assert ds.label_columns == ["pe"]
    got = {r["id"]: r["labels"] for r in ds.records}  # known without decoding an image
    assert got == {
        "a[0:8]": [0.0], "a[6:14]": [1.0], "a[12:20]": [1.0],
        "b[0:8]": [0.0], "c[0:5]": [1.0], "d[0:8]": [1.0], "d[5:13]": [1.0],
    }  # fmt: skip
    assert [ds[i]["label"].item() for i in range(len(ds))] == [v[0] for v in got.values()]


def test_bad_slice_labels_are_refused(studies: Path, tmp_path: Path) -> None:
    rows = slice_rows({})
    cases = {
        "missing": ([r for r in rows if (r["id"], r["slice"]) != ("a", 4)],
                    r"study 'a': 1 of its 20 slices have no label row \(first: slice 4\)"),
        "range": ([*rows, {"id": "c", "slice": 5, "pe": 1}],
                  r"study 'c': slice index 5 is outside its volume of 5 slices"),
        "study": ([r for r in rows if r["id"] != "b"],
                  r"1 manifest study\(ies\) have no rows in .*\(e.g. \['b'\]\)"),
        "twice": ([*rows, {"id": "a", "slice": 3, "pe": 1}],
                  r"line 48: 3 of study 'a' has two different label rows"),
    }  # fmt: skip
    for name, (r, msg) in cases.items():
        lab = write_labels(tmp_path / f"{name}.csv", r)
        with pytest.raises(ValueError, match=msg):
            len(CTDataset(studies, slice_windows=WIN, slice_labels=lab))
    with pytest.raises(ValueError, match=r"pass slice_windows=\(num_slices, stride\) too"):
        CTDataset(studies, slice_labels=lab)
    for bad in [(8,), (8, 0), (8.5, 6), "8,6"]:
        with pytest.raises(ValueError, match="slice_windows must be"):
            CTDataset(studies, slice_windows=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"labelled by sop_uid, but its volume has no meta"):
        lab = write_labels(tmp_path / "sop.csv", [{"id": s, "sop_uid": "1.2", "pe": 0}
                           for s in DEPTHS], key="sop_uid")  # fmt: skip
        len(CTDataset(studies, slice_windows=WIN, slice_labels=lab))


def test_sop_uid_labels_follow_the_readers_slice_order(tmp_path: Path) -> None:
    """meta["sop_uids"] (array order) maps per-image labels; files are listed shuffled."""
    uids = [f"1.2.{k}" for k in range(10)]
    order = np.random.default_rng(0).permutation(10)  # the reader's array order

    def reader(path: Path) -> CTVolume:
        hu = np.zeros((10, 4, 4), np.float32)
        return CTVolume(hu, spacing=(1.0, 1.0, 1.0), meta={"sop_uids": [uids[k] for k in order]})

    positive = uids[3]  # lands at array index where(order == 3)
    at = int(np.flatnonzero(order == 3)[0])
    lab = write_labels(tmp_path / "l.csv", [{"id": "s", "sop_uid": u, "pe": int(u == positive)}
                       for u in uids], key="sop_uid")  # fmt: skip
    ds = CTDataset([{"path": "s", "id": "s"}], reader=reader, slice_windows=(4, 3),
                   slice_labels=lab)  # fmt: skip
    got = {r["slices"]: r["labels"][0] for r in ds.records}
    assert got == {(a, b): float(a <= at < b) for a, b in slice_window_bounds(10, 4, 3)}
    stranger = write_labels(tmp_path / "x.csv", [{"id": "s", "sop_uid": u, "pe": 0}
                            for u in [*uids, "9.9"]], key="sop_uid")  # fmt: skip
    with pytest.raises(ValueError, match=r"1 labelled SOPInstanceUID\(s\) are not slices .*9\.9"):
        len(CTDataset([{"path": "s", "id": "s"}], reader=reader, slice_windows=(4, 3),
                      slice_labels=stranger))  # fmt: skip


def test_sop_uid_labels_on_a_dicom_series(tmp_path: Path) -> None:
    hu = np.zeros((9, 8, 8), np.float32) + 40.0 * np.arange(9)[:, None, None]
    uids = write_series(tmp_path / "s", hu, series_uid="1.2.3.4")
    if not has_sop_uids(tmp_path / "s"):
        pytest.skip("the DICOM reader does not set meta['sop_uids'] yet (issue #20 point 4)")
    lab = write_labels(tmp_path / "l.csv", [{"id": "s", "sop_uid": u, "pe": int(k == 7)}
                       for k, u in enumerate(uids)], key="sop_uid")  # fmt: skip
    ds = CTDataset([{"path": tmp_path / "s"}], slice_windows=(4, 4), slice_labels=lab,
                   windows=None)  # fmt: skip
    assert [(r["slices"], r["labels"]) for r in ds.records] == [
        ((0, 4), [0.0]), ((4, 8), [1.0]), ((5, 9), [1.0])]  # fmt: skip
    np.testing.assert_allclose(ds[1]["image"][0, :, 0, 0], 40.0 * np.arange(4, 8) - 0.0)


def test_labels_follow_resampling_along_d(studies: Path, tmp_path: Path) -> None:
    labels = np.zeros((5, 1), np.float32)
    labels[2] = 1
    # 5 -> 3 slices: output i covers source [i 5/3, (i + 1) 5/3)
    assert resample_slice_labels(labels, 3)[:, 0].tolist() == [0.0, 1.0, 0.0]
    labels[4] = 1
    assert resample_slice_labels(labels, 3)[:, 0].tolist() == [0.0, 1.0, 1.0]
    assert resample_slice_labels(labels, 10)[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 1, 1]
    lab = write_labels(tmp_path / "l.csv", slice_rows({"a": {15}}))
    ds = CTDataset(studies, slice_windows=(4, 4), slice_labels=lab, spacing=(4.0, 1.0, 1.0),
                   cache_dir=tmp_path / "cache")  # fmt: skip
    a = {r["slices"]: r["labels"][0] for r in ds.records if r["group"] == "a"}
    assert a == {(0, 4): 0.0, (4, 8): 1.0, (6, 10): 1.0}  # 20 -> 10 slices; 15 -> 7
    assert ds[1]["image"].shape == (1, 4, 12, 12)


def test_prepared_window_reads_only_its_slices(tmp_path: Path, monkeypatch) -> None:
    m = make_studies(tmp_path, {"big": 64}, hw=64)
    prepare(m, tmp_path / "out", progress=False)
    lab = write_labels(tmp_path / "l.csv", slice_rows({"big": {40}}, {"big": 64}))
    with monkeypatch.context() as mp:  # the window index comes from meta.json alone
        mp.setattr(np, "load", lambda *a, **k: pytest.fail("index built by reading hu.npy"))
        ds = CTDataset(m, prepared=tmp_path / "out", slice_windows=WIN, slice_labels=lab)
        assert len(ds) == len(slice_window_bounds(64, *WIN))
    view, _ = ds.load_hu(3)
    assert isinstance(view, np.memmap) and view.shape == (8, 64, 64)
    full = np.load(tmp_path / "out" / "studies" / next(iter(
        p.name for p in (tmp_path / "out" / "studies").iterdir())) / "hu.npy")  # fmt: skip
    np.testing.assert_array_equal(view, full[18:26])
    ds[3]  # warm up
    tracemalloc.start()
    item = ds[3]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    whole = 64 * 64 * 64 * 4  # the study as float32
    assert peak < whole / 4, f"a window allocated {peak} B; the whole study is {whole} B"
    assert item["slices"] == (18, 26) and item["label"].item() == 0.0
    assert [r["labels"][0] for r in ds.records if r["slices"][0] <= 40 < r["slices"][1]] == [1]


def test_prepared_cache_resampled_along_d_maps_slice_labels(tmp_path: Path) -> None:
    m = make_studies(tmp_path, {"s": 16})
    prepare(m, tmp_path / "out", spacing=(4.0, 1.0, 1.0), progress=False)  # 16 -> 8 slices
    lab = write_labels(tmp_path / "l.csv", slice_rows({"s": {9}}, {"s": 16}))
    ds = CTDataset(m, prepared=tmp_path / "out", slice_windows=(4, 4), slice_labels=lab)
    assert [(r["slices"], r["labels"][0]) for r in ds.records] == [((0, 4), 0.0), ((4, 8), 1.0)]
    meta = json.loads(next((tmp_path / "out" / "studies").glob("*/meta.json")).read_text())
    assert meta["shape"][0] == 8
    sop = write_labels(tmp_path / "sop.csv", [{"id": "s", "sop_uid": "1.2", "pe": 0}], "sop_uid")
    with pytest.raises(ValueError, match=r"prepared cache does not record meta\['sop_uids'\]"):
        len(CTDataset(m, prepared=tmp_path / "out", slice_windows=(4, 4), slice_labels=sop))


def _study_scores(model: torch.nn.Module, ds: CTDataset) -> tuple[list[str], torch.Tensor]:
    model.eval()
    with torch.no_grad():
        items = [ds[i] for i in range(len(ds))]
        probs = torch.sigmoid(model(torch.stack([it["image"] for it in items])))
    return aggregate_by_group(probs, [it["group"] for it in items], reduction="max")


def test_study_scores_and_val_study_auroc_are_predict_studys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = make_model()
    m = make_studies(tmp_path / "val", {f"v{k}": d for k, d in enumerate([20, 5, 13, 8, 30, 11])})
    val = CTDataset(m, slice_windows=WIN, windows="pe")
    names, scores = _study_scores(model, val)
    reference = [
        predict_study(model, read_volume(tmp_path / "val" / f"{s}.npz"), window=WIN[0],
                      stride=WIN[1], windows="pe").score[0]
        for s in names
    ]  # fmt: skip
    np.testing.assert_allclose(scores[:, 0].numpy(), reference, atol=1e-6, rtol=0)

    train_m = make_studies(tmp_path / "train", {f"t{k}": 12 for k in range(4)}, seed=1)
    train = CTDataset(train_m, slice_windows=WIN, windows="pe")
    result = finetune(model, train, val, epochs=1, batch_size=4, lr=1e-3, progress=False,
                      out_dir=tmp_path / "run", warmup_epochs=0.5)  # fmt: skip
    assert result.monitor == "val_study_auroc"
    labels = torch.tensor([r["labels"][0] for r in val.studies]).long()
    after = [
        predict_study(model, read_volume(tmp_path / "val" / f"{s}.npz"), window=WIN[0],
                      stride=WIN[1], windows="pe").score[0]
        for s in names
    ]  # fmt: skip
    want = float(binary_auroc(torch.tensor(after), labels))
    assert result.history[-1]["val_study_auroc"] == pytest.approx(want, abs=1e-6)
    assert 0.0 < want < 1.0 or len(set(after)) > 1  # scores are not degenerate


def test_prepared_cache_with_sop_uids_in_its_meta(tmp_path: Path, monkeypatch) -> None:
    """prepare keeps the reader's ``sop_uids`` in meta.json (lists of strings are kept),
    so sop_uid labels map through a prepared cache, also when prepare resampled along D."""
    import ct3dzoo.data.preparation as preparation

    uids = [f"1.2.{k}" for k in range(16)]
    real = preparation.read_volume

    def reader(path, **kw):
        vol = real(path, **kw)
        vol.meta["sop_uids"] = list(reversed(uids))  # array slice k is image uids[15 - k]
        return vol

    monkeypatch.setattr(preparation, "read_volume", reader)
    m = make_studies(tmp_path, {"s": 16})
    lab = write_labels(tmp_path / "l.csv", [{"id": "s", "sop_uid": u, "pe": int(u == "1.2.2")}
                       for u in uids], key="sop_uid")  # fmt: skip
    for spacing, want in ((None, [0, 0, 0, 1]), ((4.0, 1.0, 1.0), [0, 1])):
        out = tmp_path / f"out{spacing}"
        prepare(m, out, spacing=spacing, progress=False)
        ds = CTDataset(m, prepared=out, slice_windows=(4, 4), slice_labels=lab)
        assert [r["labels"][0] for r in ds.records] == want  # image 1.2.2 = slice 13 (6 at 4 mm)


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("study,slice,pe\na,0,1\n", r"needs an 'id' column .* got \['study', 'slice', 'pe'\]"),
        ("id,pe\na,1\n", r"needs an 'id' column .*'sop_uid'"),
        ("id,slice\na,0\n", r"no label column besides"),
        ("id,slice,sop_uid,pe\na,0,1.2,1\n", r"line 2: needs an id and exactly one of"),
        ("id,slice,pe\n,0,1\n", r"line 2: needs an id and exactly one of"),
        ("id,slice,pe\na,0,yes\n", r"line 2: bad label or slice index"),
        ("id,slice,pe\na,0.5,1\n", r"line 2: bad label or slice index"),
        ("id,slice,pe\na,0,nan\n", r"line 2: labels must be finite numbers"),
        ("id,slice,pe\na,0\n", r"line 2: 2 cells for 3 columns"),
        ("id,slice,sop_uid,pe\na,0,,1\na,,1.2,1\n", r"line 3: study 'a' is labelled both"),
    ],
)
def test_bad_slice_label_csvs(tmp_path: Path, text: str, msg: str) -> None:
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(ValueError, match=msg):
        read_slice_labels(tmp_path / "l.csv")
