"""`ct3dzoo.predict_study` and ``ct3dzoo predict``: the paper's whole-study protocol."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ct3dzoo
from ct3dzoo.data import CTVolume, apply_window
from ct3dzoo.train.study_cli import add_predict_parser, run_predict


class MeanLogit(nn.Module):
    """Logit = 10 * (window mean - 0.3): window scores are computable by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:3] == (1, 32), x.shape
        return self.scale * (x.mean(dim=(1, 2, 3, 4)) - 0.3)[:, None]


def ramp(depth: int) -> np.ndarray:
    return np.broadcast_to((np.arange(depth) / 100.0)[:, None, None], (depth, 4, 5)).copy()


def expected_prob(vol: np.ndarray, a: int, b: int, window: int = 32) -> float:
    total = vol[a:b].sum() / (window * vol.shape[1] * vol.shape[2])  # padding adds zeros
    return float(torch.sigmoid(torch.tensor(10 * (total - 0.3))))


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_windows_scores_and_slice_scores(batch_size: int) -> None:
    vol = ramp(70).astype(np.float32)
    res = ct3dzoo.predict_study(MeanLogit(), vol, batch_size=batch_size)
    assert res.window_ranges == [(0, 32), (24, 56), (38, 70)]  # last window shifted to the end
    want = [expected_prob(vol, a, b) for a, b in res.window_ranges]
    np.testing.assert_allclose(res.window_scores[:, 0], want, rtol=1e-5)
    assert res.score.shape == (1,) and res.score[0] == pytest.approx(max(want), rel=1e-5)
    assert res.slice_scores.shape == (70, 1)
    for k in range(70):
        cover = [s for (a, b), s in zip(res.window_ranges, want) if a <= k < b]
        assert res.slice_scores[k, 0] == pytest.approx(max(cover), rel=1e-5)
    mean = ct3dzoo.predict_study(MeanLogit(), vol, reduce="mean")
    assert mean.score[0] == pytest.approx(np.mean(want), rel=1e-5)


def test_short_study_is_padded_with_air_and_hu_gets_the_default_window() -> None:
    vol = ramp(10).astype(np.float32)
    res = ct3dzoo.predict_study(MeanLogit(), torch.from_numpy(vol)[None])  # (C, D, H, W)
    assert res.window_ranges == [(0, 10)]
    assert res.window_scores[0, 0] == pytest.approx(expected_prob(vol, 0, 10), rel=1e-5)
    assert res.slice_scores.shape == (10, 1)

    hu = CTVolume(np.linspace(-1000, 1500, 40 * 20).reshape(40, 4, 5).astype(np.float32))
    default = ct3dzoo.predict_study(MeanLogit(), hu)  # no record, no weights: the pe window
    a = ct3dzoo.predict_study(MeanLogit(), hu, windows="pe")
    np.testing.assert_array_equal(default.window_scores, a.window_scores)
    b = ct3dzoo.predict_study(MeanLogit(), apply_window(hu.hu, "pe"))
    np.testing.assert_array_equal(a.window_scores, b.window_scores)


@pytest.mark.parametrize(
    "kw, words",
    [({"num_slices": 0}, "must be >= 1"), ({"stride": 0}, "must be >= 1"),
     ({"reduce": "median"}, "reduce must be")],
)  # fmt: skip
def test_bad_arguments(kw: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ct3dzoo.predict_study(MeanLogit(), ramp(40), **kw)


def test_real_model_matches_manual_windows() -> None:
    torch.manual_seed(0)
    model = ct3dzoo.load("r3d_18", pretrain=None, num_classes=1).eval()
    x = torch.rand(1, 40, 32, 32)
    with pytest.warns(FutureWarning, match="window= is deprecated"):
        res = ct3dzoo.predict_study(model, x, window=16, stride=12, batch_size=2)
    assert res.window_ranges == [(0, 16), (12, 28), (24, 40)]
    with torch.no_grad():
        manual = torch.sigmoid(model(torch.stack([x[:, a:b] for a, b in res.window_ranges])))
    np.testing.assert_allclose(res.window_scores, manual.numpy(), rtol=1e-4, atol=1e-6)
    assert model.training is False


def test_cli_writes_one_row_per_study(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = ct3dzoo.load("r3d_18", pretrain=None, num_classes=1).eval()
    model.save_pretrained(str(tmp_path / "model"))
    rng = np.random.default_rng(0)
    paths = []
    for i, depth in enumerate((20, 9)):
        hu = rng.uniform(-1000, 1000, (depth, 24, 24)).astype(np.float32)
        p = tmp_path / f"case{i}.npz"
        CTVolume(hu, spacing=(2.0, 1.0, 1.0)).save_npz(str(p))
        paths.append(p)
    parser = argparse.ArgumentParser()
    add_predict_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "scores.csv"
    argv = ["predict", str(tmp_path / "model"), *map(str, paths), str(tmp_path / "gone.nii.gz"),
            "--out", str(out), "--num-slices", "8", "--stride", "6", "--shape", "0", "16", "16"]  # fmt: skip
    assert run_predict(parser.parse_args(argv)) == 1  # the missing study
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["id"] for r in rows] == ["case0", "case1", "gone"]
    assert "No such file" in rows[2]["error"] and rows[0]["error"] == ""
    vol = ct3dzoo.data.read_volume(paths[0])
    vol = ct3dzoo.data.resample(vol, shape=(20, 16, 16))
    ref = ct3dzoo.predict_study(model, vol, num_slices=8, stride=6, windows="pe")
    assert float(rows[0]["score_0"]) == pytest.approx(float(ref.score[0]), abs=2e-6)
    assert float(rows[0]["logit_0"]) == pytest.approx(float(ref.logit[0]), abs=2e-6)
    assert int(rows[0]["windows"]) == len(ref.window_ranges) == 3
    assert int(rows[1]["slices"]) == 9 and int(rows[1]["windows"]) == 2
    with pytest.raises(SystemExit, match="is one of the inputs"):
        run_predict(parser.parse_args(["predict", "r3d_18", str(paths[0]), "--out", str(paths[0])]))
