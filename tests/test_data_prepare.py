"""`prepare` / ``ct3dzoo prepare``: a manifest into a resumable, shardable int16 cache."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ct3dzoo.data import CTDataset, CTVolume, prepare
from ct3dzoo.data.cache import study_dir
from ct3dzoo.data.preparation import resolve_shard
from ct3dzoo.data.prepare_cli import add_prepare_parser, run_prepare
from ct3dzoo.errors import MissingFilesError


def make_manifest(
    root: Path, n: int = 4, broken: bool = True
) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    rows, vols = [], {}
    for i in range(n):
        hu = rng.integers(-1024, 1500, (6, 10, 12)).astype(np.float32)
        CTVolume(hu, spacing=(2.0, 0.8, 0.8)).save_npz(str(root / f"s{i}.npz"))
        rows.append({"path": f"s{i}.npz", "id": f"s{i}", "label": i % 2})
        vols[f"s{i}"] = hu
    if broken:
        (root / "broken.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
        rows.insert(2, {"path": "broken.npz", "id": "broken", "label": 1})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "id", "label"])
        w.writeheader()
        w.writerows(rows)
    return manifest, vols


def test_broken_study_is_recorded_others_cached_rerun_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, vols = make_manifest(tmp_path)
    out = tmp_path / "cache"
    res = prepare(manifest, out, progress=False)
    assert len(res.written) == 4 and len(res.failed) == 1 and not res.skipped
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["id"] == "broken"
    assert "broken.npz" in errors[0]["path"] and errors[0]["error"]
    for rid, hu in vols.items():
        d = study_dir(out, {"id": rid, "path": tmp_path / f"{rid}.npz"})
        arr = np.load(d / "hu.npy")
        assert arr.dtype == np.int16
        np.testing.assert_array_equal(arr, hu)
        meta = json.loads((d / "meta.json").read_text())
        assert meta["spacing"] == [2.0, 0.8, 0.8] and meta["shape"] == [6, 10, 12]

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("rerun read a volume")

    monkeypatch.setattr("ct3dzoo.data.preparation.read_volume", no_work)
    again = prepare(manifest, out, progress=False)
    assert not again.written and not again.failed and len(again.skipped) == 5
    assert len((out / "errors.jsonl").read_text().splitlines()) == 1


def test_half_written_study_is_redone(tmp_path: Path) -> None:
    manifest, _ = make_manifest(tmp_path, n=3, broken=False)
    out = tmp_path / "cache"
    prepare(manifest, out, progress=False)
    victim = study_dir(out, {"id": "s1", "path": tmp_path / "s1.npz"})
    stale = victim.parent / f".{victim.name}.0123abcd.tmp"  # a run killed mid-write
    victim.rename(stale)
    (stale / "meta.json").unlink()
    res = prepare(manifest, out, progress=False)
    assert res.written == [victim.name] and len(res.skipped) == 2
    assert (victim / "meta.json").is_file() and not stale.exists()


def test_two_shards_fill_one_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, _ = make_manifest(tmp_path, n=5, broken=False)
    whole, split = tmp_path / "whole", tmp_path / "split"
    prepare(manifest, whole, progress=False)
    a = prepare(manifest, split, shard="0/2", progress=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    b = prepare(manifest, split, progress=False)  # shard from the torchrun environment
    assert len(a.written) == 3 and len(b.written) == 2 and not set(a.written) & set(b.written)
    names = sorted(p.name for p in (whole / "studies").iterdir())
    assert sorted(p.name for p in (split / "studies").iterdir()) == names
    for name in names:
        np.testing.assert_array_equal(
            np.load(whole / "studies" / name / "hu.npy"),
            np.load(split / "studies" / name / "hu.npy"),
        )


def test_dataset_reads_the_cache_memory_mapped(tmp_path: Path) -> None:
    manifest, _ = make_manifest(tmp_path, n=3, broken=False)
    out = tmp_path / "cache"
    prepare(manifest, out, progress=False)
    ds = CTDataset(manifest, prepared=out, windows="pe")
    ref = CTDataset(manifest, windows="pe")
    hu, spacing = ds.load_hu(1)
    assert isinstance(hu, np.memmap) and hu.dtype == np.int16 and spacing == (2.0, 0.8, 0.8)
    for i in range(3):
        a, b = ds[i], ref[i]
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
        assert a["id"] == b["id"] and a["label"].tolist() == b["label"].tolist()
    with pytest.raises(ValueError, match="leave spacing=, shape= and cache_dir= unset"):
        CTDataset(manifest, prepared=out, shape=(4, 8, 8))


def test_dataset_names_studies_missing_from_the_cache(tmp_path: Path) -> None:
    manifest, _ = make_manifest(tmp_path)
    out = tmp_path / "cache"
    prepare(manifest, out, progress=False)
    with pytest.raises(MissingFilesError, match=r"(?s)1 study\(ies\).*broken \(.*broken\.npz\): "):
        CTDataset(manifest, prepared=out)
    with pytest.raises(FileNotFoundError, match="not a prepared folder"):
        CTDataset(manifest, prepared=tmp_path / "nothing")


def test_size_options_and_mismatch(tmp_path: Path) -> None:
    manifest, _ = make_manifest(tmp_path, n=2, broken=False)
    out = tmp_path / "c"
    prepare(manifest, out, shape=(3, 5, 6), progress=False)
    arr = np.load(next((out / "studies").iterdir()) / "hu.npy")
    assert arr.shape == (3, 5, 6) and arr.dtype == np.int16
    with pytest.raises(ValueError, match="was prepared with"):
        prepare(manifest, out, shape=(4, 5, 6), progress=False)
    with pytest.raises(ValueError, match="not both"):
        prepare(manifest, tmp_path / "d", shape=(4, 5, 6), spacing=1.0, progress=False)
    with pytest.warns(FutureWarning, match="size= is deprecated"):  # the old name, one release
        prepare(manifest, out, size=(3, 5, 6), progress=False)


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/3"])
def test_bad_shard(bad: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        resolve_shard(bad)


def test_slurm_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert resolve_shard() == (3, 8)
    assert resolve_shard((1, 2)) == (1, 2)


def test_cli_parser_and_process_workers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest, _ = make_manifest(tmp_path, n=2)
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(
        ["prepare", str(manifest), "--out", str(out), "--workers", "2", "--no-progress"]
    )
    assert run_prepare(args) == 1  # the broken study
    text = capsys.readouterr().out
    assert "2 written, 0 already done, 1 failed" in text and "errors.jsonl" in text
    args = parser.parse_args(["prepare", str(manifest), "--out", str(out), "--no-progress"])
    assert run_prepare(args) == 0
    assert "0 written, 3 already done, 0 failed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", str(manifest), "--out", "x", "--shape", "1", "2", "3",
                           "--spacing", "1"])  # fmt: skip
