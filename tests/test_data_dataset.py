"""CTDataset: manifests, windows, transforms, on-disk cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ct3dzoo.data import CTDataset, CTVolume, read_manifest
from ct3dzoo.data.transforms import CenterCrop

DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rsna-pe-demo"


def make_npz(folder: Path, name: str, value: float, shape=(4, 6, 6)) -> Path:
    p = folder / f"{name}.npz"
    CTVolume(np.full(shape, value, np.float32), spacing=(2, 1, 1)).save_npz(p)
    return p


def test_csv_manifest_items(tmp_path: Path) -> None:
    make_npz(tmp_path, "a", 400.0)
    make_npz(tmp_path, "b", -100.0)
    (tmp_path / "m.csv").write_text("path,pe,rv,study\na.npz,1,0,S1\nb.npz,0,,S1\n")
    ds = CTDataset(tmp_path / "m.csv", windows=["pe", "lung"])
    assert len(ds) == 2 and ds.num_labels == 2 and ds.label_columns == ["pe", "rv"]
    item = ds[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (2, 4, 6, 6)
    assert item["image"][0, 0, 0, 0].item() == pytest.approx(0.5)  # 400 HU in pe
    assert item["image"][1, 0, 0, 0].item() == pytest.approx(1.0)  # 400 HU in lung
    assert item["label"].tolist() == [1.0, 0.0] and item["label"].dtype == torch.float32
    assert item["id"] == "a" and item["group"] == "S1"
    b = ds[1]
    assert b["image"][0].max().item() == 0.0  # -100 HU is the bottom of the pe window
    assert b["image"][1].max().item() == pytest.approx(1250 / 1500)  # lung: [-1350, 150]
    assert torch.isnan(b["label"][1])  # empty CSV cell


def test_list_and_dict_manifests(tmp_path: Path) -> None:
    a = make_npz(tmp_path, "a", 900.0)
    ds = CTDataset([(a, 1), (str(a), 0)], windows=(400, 1000))
    assert ds[0]["image"].shape == (1, 4, 6, 6) and ds[0]["image"].max() == 1.0
    assert ds[1]["label"].tolist() == [0.0] and ds[1]["group"] == "a"
    dd = CTDataset(
        [{"path": a, "pe": 1, "id": "x1", "group": "g"}], transform=CenterCrop((2, 4, 4))
    )
    it = dd[0]
    assert it["id"] == "x1" and it["group"] == "g" and it["image"].shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match="'path' column"):
        (tmp_path / "bad.csv").write_text("file,y\na.npz,1\n")
        CTDataset(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="bad label"):
        read_manifest([{"path": a, "y": "maybe"}])


def test_windows_none_lets_transform_decide(tmp_path: Path) -> None:
    a = make_npz(tmp_path, "a", 100.0)
    ds = CTDataset([(a, 1)], windows=None)
    assert ds[0]["image"][0, 0, 0, 0].item() == 100.0
    with pytest.raises(ValueError, match="one HU channel"):
        CTDataset([(a, 1)], transform=lambda x: x.repeat(2, 1, 1, 1))[0]


def test_cache_is_written_atomically_and_reused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    a = make_npz(src, "a", 250.0, shape=(4, 8, 8))
    calls: list[Path] = []

    def reader(p: Path) -> CTVolume:
        calls.append(p)
        from ct3dzoo.data import read_volume

        return read_volume(p)

    cache = tmp_path / "cache"
    ds = CTDataset([(a, 1)], cache_dir=cache, shape=(2, 4, 4), reader=reader)
    first = ds[0]["image"]
    assert first.shape == (1, 2, 4, 4) and first[0, 0, 0, 0].item() == pytest.approx(0.35)
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    assert not [f for f in files if f.endswith(".tmp")]
    ds2 = CTDataset([(a, 1)], cache_dir=cache, shape=(2, 4, 4), reader=reader)
    hu, spacing = ds2.load_hu(0)
    assert isinstance(hu, np.memmap) and spacing == pytest.approx((4.0, 2.0, 2.0))
    assert torch.equal(ds2[0]["image"], first)
    assert len(calls) == 1  # decoded once
    CTDataset([(a, 1)], cache_dir=cache, shape=(4, 4, 4), reader=reader)[0]
    assert len(calls) == 2  # other preprocessing, other cache entry


def test_in_memory_reads_each_volume_once(tmp_path: Path) -> None:
    a, b = make_npz(tmp_path, "a", 250.0, shape=(4, 8, 8)), make_npz(tmp_path, "b", -400.0)
    calls: list[Path] = []

    def reader(p: Path) -> CTVolume:
        calls.append(p)
        from ct3dzoo.data import read_volume

        return read_volume(p)

    def doubling(x: torch.Tensor) -> torch.Tensor:  # in place: must not touch the held copy
        return x.mul_(2.0)

    kw = {"shape": (2, 4, 4), "reader": reader, "transform": doubling, "windows": None}
    held = CTDataset([(a, 1), (b, 0)], in_memory=True, **kw)
    first = [held[i]["image"] for i in range(2)]
    second = [held[i]["image"] for i in range(2)]
    assert len(calls) == 2  # one read per volume, however many epochs
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    assert first[0][0, 0, 0, 0].item() == 500.0 and first[1][0, 0, 0, 0].item() == -800.0
    plain = CTDataset([(a, 1), (b, 0)], **kw)
    assert torch.equal(plain[0]["image"], first[0]) and torch.equal(plain[0]["image"], first[0])
    assert len(calls) == 4  # without in_memory: read on every access


def test_failed_cache_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    a = make_npz(tmp_path, "a", 0.0)
    cache = tmp_path / "cache"

    def boom(fh, arr):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        CTDataset([(a, 1)], cache_dir=cache)[0]
    assert os.listdir(cache) == []


@pytest.mark.skipif(not DEMO.is_dir(), reason="../shared/data/rsna-pe-demo not present")
def test_dicom_folder_through_dataset(tmp_path: Path) -> None:
    ds = CTDataset([(DEMO, 1)], cache_dir=tmp_path, transform=CenterCrop((8, 224, 224)))
    item = ds[0]
    assert item["image"].shape == (1, 8, 224, 224) and item["id"] == "rsna-pe-demo"
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert torch.equal(ds[0]["image"], item["image"])  # second read from the memmap
