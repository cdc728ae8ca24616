"""A `prepare` rerun retries a failed study whose input changed since it failed, skips (and
counts) the ones whose input did not (issue 21, point 1)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ct3dzoo.data import CTVolume, prepare
from ct3dzoo.data.prepare_cli import add_prepare_parser, run_prepare


def _write_manifest(root: Path, rows: list[dict[str, str]]) -> Path:
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "id"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def _good(path: Path, seed: int = 0) -> np.ndarray:
    hu = np.random.default_rng(seed).integers(-1024, 1500, (4, 6, 6)).astype(np.float32)
    CTVolume(hu, spacing=(2.0, 0.8, 0.8)).save_npz(str(path))
    return hu


def _run_cli(manifest: Path, out: Path, capsys: pytest.CaptureFixture, *extra: str) -> str:
    import argparse

    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["prepare", str(manifest), "--out", str(out), "--no-progress", *extra])
    run_prepare(args)
    return capsys.readouterr().out


def test_rerun_retries_a_fixed_file_and_counts_skipped_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _good(tmp_path / "ok.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    manifest = _write_manifest(
        tmp_path, [{"path": "ok.npz", "id": "ok"}, {"path": "bad.npz", "id": "bad"}]
    )
    out = tmp_path / "cache"
    first = prepare(manifest, out, progress=False)
    assert len(first.written) == 1 and len(first.failed) == 1
    record = json.loads((out / "errors.jsonl").read_text().splitlines()[0])
    assert record["id"] == "bad" and len(record["input"]) == 16

    # unchanged: skipped, and said so
    text = _run_cli(manifest, out, capsys)
    assert "0 written, 2 already done, 0 failed" in text
    assert "1 of those failed before and their input is unchanged: not retried" in text
    assert "--retry-errors" in text
    again = prepare(manifest, out, progress=False)
    assert again.skipped_failed == list(first.failed) and not again.written

    # fixed (new content, new size and mtime): retried and written
    hu = _good(bad, seed=1)
    os.utime(bad, ns=(1, 10**18))  # a different mtime even on coarse file systems
    fixed = prepare(manifest, out, progress=False)
    assert fixed.written == list(first.failed) and not fixed.failed and not fixed.skipped_failed
    (key,) = fixed.written
    np.testing.assert_array_equal(np.load(out / "studies" / key / "hu.npy"), hu)


def test_rerun_retries_a_folder_study_when_a_file_is_added(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "junk.txt").write_text("not a slice")
    manifest = _write_manifest(tmp_path, [{"path": "series", "id": "s"}])
    out = tmp_path / "cache"
    first = prepare(manifest, out, progress=False)
    assert len(first.failed) == 1
    second = prepare(manifest, out, progress=False)
    assert second.skipped_failed == list(first.failed)
    (folder / "more.txt").write_text("still not a slice")  # changed: retried (fails again)
    third = prepare(manifest, out, progress=False)
    assert list(third.failed) == list(first.failed) and not third.skipped_failed
    lines = (out / "errors.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["input"] != json.loads(lines[1])["input"]
    fourth = prepare(manifest, out, progress=False)  # the latest failure's input: unchanged
    assert fourth.skipped_failed == list(first.failed)


def test_old_error_lines_without_input_are_skipped_not_guessed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"junk")
    manifest = _write_manifest(tmp_path, [{"path": "bad.npz", "id": "bad"}])
    out = tmp_path / "cache"
    first = prepare(manifest, out, progress=False)
    (key,) = first.failed
    line = json.loads((out / "errors.jsonl").read_text())
    del line["input"]  # written by an older ct3dzoo
    (out / "errors.jsonl").write_text(json.dumps(line) + "\n")
    _good(bad)
    assert prepare(manifest, out, progress=False).skipped_failed == [key]
    assert prepare(manifest, out, retry_errors=True, progress=False).written == [key]
