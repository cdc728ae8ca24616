"""Every example runs at a tiny size on phantom data and writes what it promises."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import defaultdict
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

import ct3dzoo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY_SIZE = ["--shape", "8", "32", "32"]


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_quickstart(tmp_path: Path) -> None:
    assert (
        _example("quickstart").main(
            ["--out", str(tmp_path), "--tiny", "--no-pretrain", "--arch", "x3d_xs"]
        )
        == 0
    )
    assert (tmp_path / "story" / "dicom" / "case_0000").is_dir()
    assert (tmp_path / "demo" / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "demo" / "summary.json").is_file()


def test_extract_features(tmp_path: Path) -> None:
    mod = _example("extract_features")
    # r3d_18: random x3d features are exactly 0 in eval mode (zero-init residual BNs)
    args = ["--phantom", "4", *TINY_SIZE, "--no-pretrain", "--arch", "r3d_18"]
    args += ["--out", str(tmp_path)]
    assert mod.main(args) == 0
    feats = np.load(tmp_path / "features.npy")
    labels = np.load(tmp_path / "labels.npy")
    num_features = ct3dzoo.load("r3d_18", pretrain=None, num_classes=0).num_features
    assert feats.shape == (4, num_features) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std(axis=0).max() > 0
    manifest = _rows(tmp_path / "phantom" / "manifest.csv")
    assert labels.shape == (4, 1)
    assert labels[:, 0].tolist() == [float(r["label"]) for r in manifest]
    ids = (tmp_path / "ids.txt").read_text().split()
    assert ids == [Path(r["path"]).name.split(".")[0] for r in manifest]


def test_extract_features_without_weights_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CT3DZOO_OFFLINE", "1")
    args = ["--phantom", "2", *TINY_SIZE, "--out", str(tmp_path)]
    assert _example("extract_features").main(args) == 1
    assert "--no-pretrain" in capsys.readouterr().out


def test_finetune_dicom_folder(tmp_path: Path) -> None:
    mod = _example("finetune_dicom_folder")
    args = ["--phantom", "8", *TINY_SIZE, "--epochs", "1", "--no-pretrain", "--out", str(tmp_path)]
    assert mod.main([*args, "--windows", "lung", "40,400"]) == 0  # the CLI's vocabulary
    preds = _rows(tmp_path / "val_predictions.csv")
    assert len(preds) == 2  # 8 phantoms, one per group, val fraction 0.25
    assert all(0.0 <= float(r["label"]) <= 1.0 for r in preds)
    all_ids = {r["path"].split("/")[-1] for r in _rows(tmp_path / "phantom" / "manifest.csv")}
    assert {r["id"] for r in preds} <= all_ids
    saved = ct3dzoo.load(tmp_path / "model")  # one channel per window, recorded as trained
    assert saved.in_chans == 2 and len(saved.preprocessing.windows) == 2
    assert saved.preprocessing.windows == ("lung", (40.0, 400.0))
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 1


def test_paper_protocol_study_score_is_max_over_windows(tmp_path: Path) -> None:
    mod = _example("paper_protocol")
    args = [
        "--phantom", "6", "--phantom-shape", "24", "64", "64", "--num-slices", "8",
        "--stride", "6", "--shape", "0", "32", "32", "--epochs", "1", "--no-pretrain",
        "--val-fraction", "0.5", "--out", str(tmp_path),
    ]  # fmt: skip
    assert mod.main(args) == 0
    windows = _rows(tmp_path / "window_scores.csv")
    studies = _rows(tmp_path / "study_scores.csv")
    assert len(studies) == 3
    per_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    for w in windows:
        per_study[w["study"]].append(w)
    for s in studies:
        ws = per_study[s["study"]]
        # 24 slices, 8-slice windows every 6, the last one shifted to end at slice 24
        assert [(int(w["start"]), int(w["stop"])) for w in ws] == [
            (0, 8),
            (6, 14),
            (12, 20),
            (16, 24),
        ]
        assert float(s["prob"]) == pytest.approx(max(float(w["prob"]) for w in ws), abs=1e-6)
        assert int(s["label"]) == max(int(w["label"]) for w in ws)
        top = int(s["top_slice"])  # predict_study's per-slice scores: inside a best window
        best = max(float(w["prob"]) for w in ws)
        assert any(
            int(w["start"]) <= top < int(w["stop"]) and float(w["prob"]) >= best - 2e-6 for w in ws
        )


def test_paper_protocol_slice_labels_from_masks(tmp_path: Path) -> None:
    mod = _example("paper_protocol")
    args = SimpleNamespace(phantom=4, seed=0, phantom_shape=(24, 64, 64))
    _, labels = mod.phantom_manifests(args, tmp_path)
    rows = _rows(labels)
    for case in json.loads((tmp_path / "phantom" / "cases.json").read_text()):
        pe = [int(r["pe"]) for r in rows if r["id"] == case["case"]]
        assert len(pe) == 24 and max(pe) == case["label"]
        if case["finding"]:  # positive slices: around the embolus centre, within its radius
            centre = case["finding"]["centre"][0]
            reach = case["finding"]["radius_mm"] / case["spacing"][0] + 1
            assert pe[round(centre)] == 1
            assert all(abs(d - centre) <= reach for d in np.flatnonzero(pe))


def test_compare_pretraining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline: Kinetics/MedicalNet weights are unavailable, so those pairs train from random
    init and the output and CSV say so; random-init pairs are labelled as such."""
    monkeypatch.setenv("CT3DZOO_OFFLINE", "1")
    args = ["--phantom", "9", *TINY_SIZE, "--sizes", "2", "6", "--epochs", "1"]
    args += ["--batch-size", "2", "--out", str(tmp_path), "--nodule-radius-mm", "18", "28"]
    args += ["--pairs", "r3d_18:kinetics", "medicalnet_resnet10:medicalnet", "r3d_18:none"]
    with pytest.warns(UserWarning, match="intervals and p-values are unreliable"):
        assert _example("compare_pretraining").main(args) == 0
    out = capsys.readouterr().out
    assert "medicalnet_resnet10:medicalnet: weights unavailable, training from RANDOM" in out
    rows = _rows(tmp_path / "results.csv")
    assert [(r["arch"], r["pretrain"], int(r["n_train"])) for r in rows] == [
        ("r3d_18", "kinetics", 2), ("r3d_18", "kinetics", 6),
        ("medicalnet_resnet10", "medicalnet", 2), ("medicalnet_resnet10", "medicalnet", 6),
        ("r3d_18", "None", 2), ("r3d_18", "None", 6),
    ]  # fmt: skip
    assert [r["weights"] for r in rows] == ["random init (unavailable)"] * 4 + ["random init"] * 2
    assert all(0.0 <= float(r["auroc"]) <= 1.0 for r in rows)  # 3 val studies, both classes
    assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    cases = json.loads((tmp_path / "phantom" / "cases.json").read_text())
    radii = [c["finding"]["radius_mm"] for c in cases if c["finding"]]
    assert radii and all(18.0 <= r <= 28.0 for r in radii)  # --nodule-radius-mm reached them
    # per size, each source's AUROC with its interval, and paired tests between sources
    summary = _rows(tmp_path / "summary.csv")
    assert [(r["source"], int(r["n_train"])) for r in summary][:3] == [
        ("r3d_18:kinetics", 2), ("medicalnet_resnet10:medicalnet", 2), ("r3d_18:none", 2),
    ]  # fmt: skip
    for r in summary:
        assert float(r["auroc_ci_low"]) <= float(r["auroc"]) <= float(r["auroc_ci_high"])
    # the same arch from the same seeded random init (kinetics unavailable) is the same model
    tests = {(r["a"], r["b"], r["n_train"]): r for r in _rows(tmp_path / "comparisons.csv")}
    assert len(tests) == 6
    same = tests[("r3d_18:kinetics", "r3d_18:none", "6")]
    assert float(same["auroc_diff"]) == 0.0 and float(same["p_value"]) == 1.0
    assert "NOTE: only" in out  # 3 validation studies: the intervals say they are unreliable
    with pytest.raises(ct3dzoo.errors.WeightsUnavailableError):
        _example("compare_pretraining").main([*args, "--strict", "--sizes", "2"])


def test_segment_phantom(tmp_path: Path) -> None:
    import json

    mod = _example("segment_phantom")
    args = ["--out", str(tmp_path), "--n", "8", *TINY_SIZE, "--epochs", "1"]
    assert mod.main(args) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n_train"] == 6 and s["n_val"] == 2 and s["best_epoch"] == 1
    assert 0.0 <= s["val_dice"] <= 1.0 and 0.0 <= s["val_dice_case"] <= 1.0
    assert s["empty_dice"] == 0.0
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
