"""compare_sources: the paired bootstrap finds nothing between a model and itself, a clear
difference between a trained and a random model, and intervals over studies and seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from ct3dzoo.train import compare_sources


def _scores(seeds: int, n: int = 60, sep: float = 1.5, seed: int = 0):
    """Scores with a known separation: ``sep`` standard deviations between the classes."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
    return y, sep * y + rng.normal(size=(seeds, n))


def test_model_against_itself_is_no_difference() -> None:
    y, trained = _scores(3)
    r = compare_sources({"a": trained, "b": trained.copy()}, y)
    (c,) = r["comparisons"]
    assert c["auroc_diff"] == 0.0 and c["diff_ci"] == [0.0, 0.0] and c["p_value"] == 1.0
    assert r["sources"]["a"] == r["sources"]["b"]


def test_trained_against_random_is_a_clear_difference() -> None:
    y, trained = _scores(3, sep=1.5)
    _, random = _scores(3, sep=0.0, seed=1)
    r = compare_sources({"trained": trained, "random": random}, y, seed=0)
    (c,) = r["comparisons"]
    assert (c["a"], c["b"]) == ("trained", "random")
    assert c["p_value"] < 0.05 and c["diff_ci"][0] > 0.1
    assert c["diff_ci"][0] < c["auroc_diff"] < c["diff_ci"][1]
    # the reverse pair: the same test, the sign flipped
    (rev,) = compare_sources(
        {"trained": trained, "random": random}, y, pairs=[("random", "trained")]
    )["comparisons"]
    assert rev["auroc_diff"] == pytest.approx(-c["auroc_diff"]) and rev["p_value"] == c["p_value"]
    json.dumps(r, allow_nan=False)


def test_two_close_models_are_not_called_different() -> None:
    """Same separation, independent noise: p well above 0.05 (this draw), diff CI spans 0."""
    y, a = _scores(1, sep=1.0, seed=2)
    _, b = _scores(1, sep=1.0, seed=3)
    (c,) = compare_sources({"a": a, "b": b}, y)["comparisons"]
    assert c["diff_ci"][0] < 0 < c["diff_ci"][1] and c["p_value"] > 0.2


def test_source_auroc_is_the_seed_mean_with_an_interval_over_studies_and_seeds() -> None:
    y, s3 = _scores(3, sep=1.0, seed=4)
    r = compare_sources({"x": s3}, y, n_resamples=1000)
    src = r["sources"]["x"]
    per_seed = [float(binary_auroc(torch.as_tensor(s), torch.as_tensor(y).long())) for s in s3]
    assert src["auroc_per_seed"] == pytest.approx(per_seed, abs=1e-6)
    assert src["auroc"] == pytest.approx(np.mean(per_seed), abs=1e-6)
    assert src["auroc_ci"][0] < src["auroc"] < src["auroc_ci"][1]
    assert (
        r["n_seeds"] == 3
        and r["comparisons"] == []
        and r == compare_sources({"x": s3}, y, n_resamples=1000)
    )
    # seeds that disagree widen the interval over what the studies alone give
    spread = s3.copy()
    spread[0] = y * 0.2 + np.random.default_rng(5).normal(size=y.size)  # one poor seed
    one = compare_sources({"x": spread[:1].repeat(3, 0)}, y, n_resamples=1000)["sources"]["x"]
    mixed = compare_sources({"x": spread}, y, n_resamples=1000)["sources"]["x"]
    assert mixed["auroc_ci"][1] - mixed["auroc_ci"][0] > one["auroc_ci"][1] - one["auroc_ci"][0]


@pytest.mark.parametrize(
    ("scores", "targets", "kw", "match"),
    [
        ({"a": np.zeros(4)}, np.zeros(4), {}, "other class"),
        ({"a": np.zeros(3)}, np.array([0, 1, 0, 1]), {}, "same 4 validation studies"),
        ({"a": np.zeros((2, 4)), "b": np.zeros((3, 4))}, np.array([0, 1, 0, 1]), {}, "seeds"),
        ({"a": np.array([0, np.nan, 0, 1])}, np.array([0, 1, 0, 1]), {}, "NaN"),
        ({"a": np.zeros(4)}, np.array([0, 1, 0, 1]), {"pairs": [("a", "z")]}, "not in scores"),
        ({}, np.array([0, 1]), {}, "empty"),
    ],
)
def test_bad_input(scores, targets, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        compare_sources(scores, targets, **kw)


def test_few_studies_warn_that_the_interval_is_unreliable() -> None:
    """Perfect separation of 3 + 3 studies: every resample gives AUROC 1, a zero-width
    interval and a tiny p-value, so the result says not to trust it."""
    y = np.array([1, 1, 1, 0, 0, 0])
    with pytest.warns(UserWarning, match="only 3 positive and 3 negative studies"):
        r = compare_sources({"a": y + 0.5, "b": -y}, y)
    assert r["sources"]["a"]["auroc_ci"] == [1.0, 1.0] and "unreliable" in r["note"]
