"""Manifests: reserved columns (``series_uid`` is read, never a label), blank paths and
duplicate ids refused with the row named (issues #20.3, #21.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_rsna_layout import write_series

import ct3dzoo.data.preparation as preparation
from ct3dzoo.data import RESERVED_COLUMNS, CTDataset, CTVolume, prepare, read_manifest
from ct3dzoo.errors import DicomSeriesError


def npz(folder: Path, name: str, value: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.npz"
    CTVolume(np.full((4, 6, 6), value, np.float32), spacing=(1.0, 1.0, 1.0)).save_npz(p)
    return p


def test_reserved_columns_are_never_labels(tmp_path: Path) -> None:
    assert {"id", "path", "group", "study", "series_uid"} == set(RESERVED_COLUMNS)
    npz(tmp_path, "a")
    m = tmp_path / "m.csv"
    m.write_text("path,id,study,series_uid,seg,y\na.npz,s1,p1,1.2.826.0.1,a.npz,1\n")
    records, cols = read_manifest(m, mask_column="seg")
    assert cols == ["y"]
    assert records[0]["series_uid"] == "1.2.826.0.1" and records[0]["group"] == "p1"
    assert records[0]["mask"] == tmp_path / "a.npz" and records[0]["labels"] == [1.0]
    with pytest.raises(ValueError, match=r"label_columns \['series_uid'\] are reserved"):
        read_manifest(m, ["y", "series_uid"])


@pytest.mark.parametrize("cell", ["", "   ", "\t"])
def test_blank_path_is_an_error_naming_the_row(tmp_path: Path, cell: str) -> None:
    npz(tmp_path, "a")
    m = tmp_path / "m.csv"
    m.write_text(f"path,y\na.npz,0\n{cell},1\n")
    with pytest.raises(ValueError, match=r"m\.csv line 3: the 'path' cell is blank"):
        read_manifest(m)
    with pytest.raises(ValueError, match=r"m\.csv line 3: the 'path' cell is blank"):
        CTDataset(m)
    with pytest.raises(ValueError, match=r"m\.csv line 3: the 'path' cell is blank"):
        prepare(m, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything is written
    with pytest.raises(ValueError, match=r"manifest item 1: the 'path' cell is blank"):
        read_manifest([{"path": tmp_path / "a.npz", "y": 0}, {"path": " ", "y": 1}])


def test_duplicate_ids_naming_two_volumes_are_errors(tmp_path: Path) -> None:
    npz(tmp_path, "a"), npz(tmp_path, "b"), npz(tmp_path / "x", "a")
    m = tmp_path / "m.csv"
    m.write_text("path,id,y\na.npz,s1,0\nb.npz,s2,1\nb.npz,s1,1\n")
    msg = (
        r"id 's1' names two volumes: .*m\.csv line 2 \(.*a\.npz\) and .*m\.csv line 4 \(.*b\.npz\)"
    )
    for read in (read_manifest, CTDataset, lambda p: prepare(p, tmp_path / "o", progress=False)):
        with pytest.raises(ValueError, match=msg):
            read(m)
    # default ids are file names: a.npz and x/a.npz are both 'a'
    m.write_text("path,y\na.npz,0\nx/a.npz,1\n")
    with pytest.raises(ValueError, match=r"id 'a' names two volumes.*an 'id' column"):
        read_manifest(m)
    # one folder, two series under one id: two volumes as well
    m.write_text("path,id,series_uid,y\nx,s,1.1,0\nx,s,1.2,1\n")
    with pytest.raises(ValueError, match=r"id 's' names two volumes: .*series 1\.1.*series 1\.2"):
        read_manifest(m)


def test_repeated_row_of_one_volume_is_allowed(tmp_path: Path) -> None:
    """The same id, path and series twice is one volume listed twice (e.g. oversampling)."""
    npz(tmp_path, "a", 100.0)
    m = tmp_path / "m.csv"
    m.write_text("path,id,y\na.npz,s1,1\n./a.npz,s1,1\n")
    records, _ = read_manifest(m)
    assert [r["id"] for r in records] == ["s1", "s1"]
    assert len(CTDataset(m)) == 2


def test_series_uid_column_chooses_the_series(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "study"
    hu = np.zeros((4, 8, 8), np.float32)
    write_series(folder / "s1", hu + 100.0, series_uid="1.2.3.1")
    write_series(folder / "s2", hu + 500.0, series_uid="1.2.3.2", seed=1)
    for f in (folder / "s2").iterdir():  # one study folder holding both series
        f.rename(folder / f"b_{f.name}")
    for f in (folder / "s1").iterdir():
        f.rename(folder / f"a_{f.name}")
    (folder / "s1").rmdir(), (folder / "s2").rmdir()
    m = tmp_path / "m.csv"
    m.write_text("path,y\nstudy,1\n")
    with pytest.raises(DicomSeriesError):
        CTDataset(m, windows=None)[0]
    m.write_text("path,id,series_uid,y\nstudy,soft,1.2.3.1,0\nstudy,bone,1.2.3.2,1\n")
    ds = CTDataset(m, windows=None, cache_dir=tmp_path / "cache")
    assert ds.label_columns == ["y"]
    assert [float(ds[i]["image"].mean()) for i in range(2)] == pytest.approx([100.0, 500.0])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # cached per series

    seen: list[Any] = []
    real = preparation.read_volume

    def spy(path: Any, **kw: Any) -> CTVolume:
        seen.append(kw.get("series_uid"))
        return real(path, **kw)

    monkeypatch.setattr(preparation, "read_volume", spy)
    result = prepare(m, tmp_path / "out", progress=False)
    assert not result.failed and sorted(seen) == ["1.2.3.1", "1.2.3.2"]
    prepared = CTDataset(m, windows=None, prepared=tmp_path / "out")
    assert [float(prepared[i]["image"].mean()) for i in range(2)] == pytest.approx([100.0, 500.0])


def test_custom_reader_gets_series_uid_only_when_given(tmp_path: Path) -> None:
    calls: list[tuple[str, dict]] = []

    def reader(path: Path, **kw: Any) -> CTVolume:
        calls.append((Path(path).name, kw))
        return CTVolume(np.zeros((2, 4, 4), np.float32), spacing=(1.0, 1.0, 1.0))

    CTDataset([{"path": "a", "series_uid": "9.8", "y": 1}, {"path": "b", "y": 0}],
              reader=reader)[0]  # fmt: skip
    CTDataset([{"path": "b", "y": 0}], reader=reader)[0]
    assert calls == [("a", {"series_uid": "9.8"}), ("b", {})]
