"""Bootstrap confidence intervals over studies: checked against torchmetrics per resample and
against scipy.stats.bootstrap; their properties; finetune's ``*_ci`` history keys."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_common import BlobData, make_model
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from ct3dzoo.train import bootstrap_ci, finetune, study_metrics
from ct3dzoo.train.bootstrap import (
    bootstrap_counts,
    weighted_auroc,
    weighted_average_precision,
)


def _data(n: int, seed: int = 0, sep: float = 1.0, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
    s = sep * y + rng.normal(size=n)
    return (np.round(s) if ties else s), y


def _tm(fn, s: np.ndarray, y: np.ndarray) -> float:
    return float(fn(torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(y).long()))


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_metrics_equal_torchmetrics_on_the_resampled_studies(ties: bool) -> None:
    """Each resample's count row, expanded into a list of drawn studies, scored by torchmetrics
    (an independent implementation) gives the vectorised value."""
    s, y = _data(60, ties=ties)
    counts = bootstrap_counts(y, n_resamples=40, seed=3)
    got_auroc = weighted_auroc(s, y, counts)
    got_ap = weighted_average_precision(s, y, counts)
    for b in range(40):
        idx = np.repeat(np.arange(60), counts[b])
        assert got_auroc[b] == pytest.approx(
            _tm(binary_auroc, s[idx], y[idx]), abs=1e-6
        )  # torchmetrics: float32
        assert got_ap[b] == pytest.approx(
            _tm(binary_average_precision, s[idx], y[idx]), abs=1e-6
        )  # torchmetrics: float32
    ones = np.ones((1, 60))
    assert weighted_auroc(s, y, ones)[0] == pytest.approx(_tm(binary_auroc, s, y), abs=1e-6)


def test_counts_are_stratified_and_seeded() -> None:
    y = np.r_[np.ones(7), np.zeros(13)]
    c = bootstrap_counts(y, n_resamples=500, seed=0)
    assert c.shape == (500, 20)
    assert (c[:, :7].sum(axis=1) == 7).all() and (c[:, 7:].sum(axis=1) == 13).all()
    assert np.array_equal(c, bootstrap_counts(y, n_resamples=500, seed=0))
    assert not np.array_equal(c, bootstrap_counts(y, n_resamples=500, seed=1))
    assert c.std() > 0.5  # resamples differ (a count of 1 everywhere would be no bootstrap)


def test_interval_matches_scipy_bootstrap() -> None:
    """scipy.stats.bootstrap with positives and negatives as two independent samples is the
    stratified bootstrap; AUROC there from all pairs (no shared code). Both percentile
    intervals, 5000 resamples each: the ends agree to Monte Carlo error."""
    from scipy.stats import bootstrap

    s, y = _data(80, seed=1)
    pos, neg = s[y == 1], s[y == 0]

    def auroc(x: np.ndarray, z: np.ndarray, axis: int = -1) -> np.ndarray:
        d = x[..., :, None] - z[..., None, :]
        return (d > 0).mean(axis=(-2, -1)) + 0.5 * (d == 0).mean(axis=(-2, -1))

    ref = bootstrap(
        (pos, neg), auroc, n_resamples=5000, vectorized=True, method="percentile",
        confidence_level=0.95, random_state=np.random.default_rng(0),
    ).confidence_interval  # fmt: skip
    ci = bootstrap_ci(s[:, None], y[:, None], n_resamples=5000, seed=0)["auroc_ci"]
    assert ci[0] == pytest.approx(ref.low, abs=0.012)
    assert ci[1] == pytest.approx(ref.high, abs=0.012)
    assert ci[1] - ci[0] > 0.1  # 80 studies: a real width, not a degenerate interval


def test_interval_contains_point_narrows_with_n_and_is_deterministic() -> None:
    widths = []
    for n in (40, 400):
        s, y = _data(n, seed=2)
        ci = bootstrap_ci(s[:, None], y[:, None], seed=5)
        point = _tm(binary_auroc, s, y)
        ap = _tm(binary_average_precision, s, y)
        assert ci["auroc_ci"][0] < point < ci["auroc_ci"][1]
        assert ci["auprc_ci"][0] < ap < ci["auprc_ci"][1]
        widths.append(ci["auroc_ci"][1] - ci["auroc_ci"][0])
        assert ci == bootstrap_ci(s[:, None], y[:, None], seed=5)
        assert ci != bootstrap_ci(s[:, None], y[:, None], seed=6)
    assert widths[1] < 0.5 * widths[0]  # ~ 1 / sqrt(n): 10x the studies, ~0.32x the width


def test_windows_of_a_study_are_resampled_together() -> None:
    """Two identical windows per study with ``groups``: the same interval as the studies."""
    s, y = _data(30, seed=4)
    study = bootstrap_ci(s[:, None], y[:, None], seed=0)
    windows = bootstrap_ci(
        np.repeat(s, 2)[:, None], np.repeat(y, 2)[:, None], seed=0,
        groups=[f"s{i}" for i in np.repeat(np.arange(30), 2)],
    )  # fmt: skip
    assert windows.keys() == study.keys()
    for key in study:  # [low, high] per key (approx() takes no nested values since pytest 9.2)
        np.testing.assert_allclose(windows[key], study[key], rtol=0, atol=1e-12)
    naive = bootstrap_ci(np.repeat(s, 2)[:, None], np.repeat(y, 2)[:, None], seed=0)
    width = lambda c: c["auroc_ci"][1] - c["auroc_ci"][0]  # noqa: E731
    assert width(naive) < 0.85 * width(study)  # windows as if independent: too narrow


def test_multilabel_keys_single_class_label_and_mean() -> None:
    s, y = _data(40, seed=6)
    probs = np.stack([s, -s, s], axis=1)
    targets = np.stack([y, 1 - y, np.ones(40)], axis=1)  # label "c": positives only
    ci = bootstrap_ci(probs, targets, label_names=["a", "b", "c"], prefix="val_")
    assert set(ci) == {
        f"val_{m}_ci{suffix}" for m in ("auroc", "auprc") for suffix in ("", "/a", "/b", "/c")
    }
    assert all(math.isnan(v) for v in ci["val_auroc_ci/c"])
    assert ci["val_auroc_ci/a"] == ci["val_auroc_ci/b"]  # b mirrors a: same partition, same draws
    # the mean of a and b (equal on every resample) is their interval
    assert ci["val_auroc_ci"] == pytest.approx(ci["val_auroc_ci/a"], abs=1e-12)


def test_thousand_resamples_of_a_hundred_studies_are_fast() -> None:
    s, y = _data(100, seed=7)
    bootstrap_ci(s[:, None], y[:, None])  # warm-up
    t0 = time.perf_counter()
    bootstrap_ci(s[:, None], y[:, None], n_resamples=1000)
    assert time.perf_counter() - t0 < 0.5  # measured ~0.015 s on one CPU core


def test_study_metrics_binary_is_json_ready() -> None:
    s, y = _data(50, seed=8)
    m = study_metrics(1 / (1 + np.exp(-s)), y)
    json.dumps(m, allow_nan=False)
    assert m["n_studies"] == 50 and m["n_positive"] == 25
    assert m["auroc"] == pytest.approx(_tm(binary_auroc, s, y), abs=1e-6)
    assert m["auroc_ci"][0] < m["auroc"] < m["auroc_ci"][1]
    assert "percentile" in m["interval"] and "per_label" not in m and "note" not in m
    few = study_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert few["auroc_ci"] == [1.0, 1.0] and "only 2 positive and 2 negative" in few["note"]
    assert m == study_metrics(1 / (1 + np.exp(-s)), y)  # seeded


def test_study_metrics_multiclass_and_multilabel() -> None:
    rng = np.random.default_rng(9)
    labels = np.repeat(np.arange(3), 10)
    logits = np.eye(3)[labels] * 2 + rng.normal(size=(30, 3))
    probs = torch.softmax(torch.as_tensor(logits), dim=1)
    m = study_metrics(probs, labels, task="multiclass", label_names=["x", "y", "z"])
    assert set(m["per_label"]) == {"x", "y", "z"} and m["per_label"]["x"]["n_positive"] == 10
    json.dumps(m, allow_nan=False)
    targets = np.stack([labels == 0, np.ones(30)], axis=1).astype(float)
    m = study_metrics(probs[:, :2], targets, task="multilabel")
    assert m["per_label"]["1"]["auroc"] is None and m["per_label"]["1"]["auroc_ci"] == [None] * 2
    assert m["auroc"] == pytest.approx(m["per_label"]["0"]["auroc"])


@pytest.mark.parametrize(
    ("probs", "labels", "kw", "match"),
    [
        (np.full(4, 0.5), np.zeros(4), {}, "other class"),
        (np.full(4, 0.5), np.array([0, 1, 2, 1]), {}, "0 or 1"),
        (np.full(4, 0.5), np.array([0, 1]), {}, "one per score"),
        (np.array([0.1, np.nan, 0.3, 0.4]), np.array([0, 1, 0, 1]), {}, "NaN"),
        (np.full((4, 2), 0.5), np.array([0, 1, 0, 1]), {}, "task='multilabel'"),
        (np.full((4, 2), 0.5), np.array([0, 1, 3, 1]), {"task": "multiclass"}, "0..1"),
        (np.full(4, 0.5), np.array([0, 1, 0, 1]), {"task": "regression"}, "task="),
    ],
)
def test_study_metrics_bad_input(probs, labels, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        study_metrics(probs, labels, **kw)


def test_finetune_logs_intervals(tmp_path: Path) -> None:
    """history, log.jsonl and state.pt hold the ``[low, high]`` lists; the monitor stays a
    number; the interval holds the epoch's point estimate."""
    train = BlobData(16, seed=0, windows_per_study=2)
    val = BlobData(24, seed=1, windows_per_study=2)
    r = finetune(
        make_model(), train, val, epochs=1, lr=1e-2, batch_size=8, out_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    h = r.history[0]
    for key in ("val_auroc", "val_auprc", "val_study_auroc", "val_study_auprc"):
        lo, hi = h[f"{key}_ci"]
        assert isinstance(h[key], float) and lo <= h[key] <= hi and hi - lo > 0, key
    assert r.monitor == "val_study_auroc" and r.best_metric == h["val_study_auroc"]
    logged = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert logged["val_study_auroc_ci"] == h["val_study_auroc_ci"]
    state = torch.load(tmp_path / "last" / "state.pt", weights_only=True)
    assert state["history"][0]["val_auroc_ci"] == h["val_auroc_ci"]
    with pytest.raises(ValueError, match="monitor 'val_auroc' instead"):
        finetune(
            make_model(), train, val, epochs=1, batch_size=8, out_dir=tmp_path / "m",
            progress=False, monitor="val_auroc_ci",
        )  # fmt: skip
