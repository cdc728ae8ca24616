"""Comparing models scored on the same validation studies (e.g. pretraining sources).

:func:`compare_sources` gives each source's AUROC with a percentile interval from a
bootstrap over studies and seeds, and a paired bootstrap test of every difference: one
resample draws the studies (positives and negatives separately) and the seeds, and every
source is scored on that same draw, so what the sources share (the studies' difficulty,
the training subset of a seed) cancels in the difference.

Why a paired bootstrap rather than DeLong's test: it compares means over several seeds
(DeLong compares two score vectors), it resamples exactly as the ``*_ci`` intervals of
``finetune`` do, and it needs no normal approximation, which is poor for a few dozen
studies and AUROCs near 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from .bootstrap import bootstrap_counts, few_studies_note, weighted_auroc

__all__ = ["compare_sources"]


def _as_runs(name: str, scores: Any, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    s = s[None] if s.ndim == 1 else s
    if s.ndim != 2 or s.shape[1] != n:
        raise ValueError(
            f"scores[{name!r}] has shape {np.shape(scores)}: give (N,) or (seeds, N) scores "
            f"for the same {n} validation studies as targets"
        )
    if not np.isfinite(s).all():
        raise ValueError(f"scores[{name!r}] hold NaN or inf: score every validation study")
    return s


def _ci(values: np.ndarray, confidence: float) -> list[float]:
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(lo), float(hi)]


def compare_sources(
    scores: Mapping[str, Any],
    targets: Any,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC of each source with its interval, and paired tests between sources.

    Args:
        scores: ``{source: (N,) or (S, N) scores}``: S training seeds (the same number for
            every source; seed ``k`` of each source is paired, e.g. the same training subset
            and initial head) scored on the same ``N`` validation studies.
        targets: ``(N,)`` binary study labels, both classes present.
        pairs: ``(a, b)`` source pairs to test (default: every pair, in the given order).
        n_resamples: bootstrap resamples (studies and seeds drawn together).
        confidence: of the percentile intervals.
        seed: of the bootstrap (the global RNGs are not touched).

    Returns a JSON-ready dict: ``{"n_studies", "n_positive", "n_seeds", "n_resamples",
    "confidence", "interval", "sources": {name: {"auroc", "auroc_ci": [low, high],
    "auroc_per_seed"}}, "comparisons": [{"a", "b", "auroc_diff", "diff_ci", "p_value"}]}``.
    ``auroc`` is the mean over seeds; ``auroc_diff`` is ``a - b``; ``p_value`` is two-sided,
    ``(1 + k) / (1 + n_resamples)`` where ``k`` resamples lie at least ``|auroc_diff|`` from
    the observed difference (the bootstrap distribution shifted to no difference): 1 for a
    model against itself. With fewer than 10 positive or negative studies it warns (and
    adds ``note``): such intervals and p-values are unreliable.
    """
    y = np.asarray(targets)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError(f"targets must be (N,) labels 0/1, got shape {y.shape}")
    n_pos = int(y.sum())
    if n_pos in (0, y.size):
        raise ValueError(
            f"all {y.size} validation targets are {int(y[0]) if y.size else '-'}: AUROC needs "
            "positive and negative studies; add studies of the other class"
        )
    if not scores:
        raise ValueError("scores is empty: give {source: scores} for at least one source")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: use a fraction in (0, 1), e.g. 0.95")
    runs = {name: _as_runs(name, s, y.size) for name, s in scores.items()}
    n_seeds = {r.shape[0] for r in runs.values()}
    if len(n_seeds) != 1:
        got = {name: r.shape[0] for name, r in runs.items()}
        raise ValueError(f"sources have different numbers of seeds {got}: pair them 1:1")
    (s,) = n_seeds
    names = list(runs)
    pairs = list(combinations(names, 2)) if pairs is None else [tuple(p) for p in pairs]
    for a, b in pairs:
        if a not in runs or b not in runs:
            raise ValueError(f"pair {(a, b)} names a source not in scores {names}")

    note = few_studies_note(n_pos, y.size - n_pos)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    counts = bootstrap_counts(y, n_resamples=n_resamples, seed=seed)
    rng = np.random.default_rng([seed, 1])  # the seeds' draw, apart from the studies'
    seed_counts = rng.multinomial(s, np.full(s, 1.0 / s), size=n_resamples) / s
    ones = np.ones((1, y.size))
    point, boot, per_seed = {}, {}, {}
    for name, r in runs.items():
        per_seed[name] = [float(weighted_auroc(r[k], y, ones)[0]) for k in range(s)]
        point[name] = float(np.mean(per_seed[name]))
        resampled = np.stack([weighted_auroc(r[k], y, counts) for k in range(s)], axis=1)
        boot[name] = (seed_counts * resampled).sum(axis=1)  # (B,) mean over drawn seeds

    comparisons = []
    for a, b in pairs:
        diff = point[a] - point[b]
        d = boot[a] - boot[b]
        k = int((np.abs(d - diff) >= abs(diff) - 1e-12).sum())
        comparisons.append(
            {
                "a": a,
                "b": b,
                "auroc_diff": diff,
                "diff_ci": _ci(d, confidence),
                "p_value": (1 + k) / (1 + n_resamples),
            }
        )
    return {
        "n_studies": int(y.size),
        "n_positive": n_pos,
        "n_seeds": s,
        "n_resamples": n_resamples,
        "confidence": confidence,
        "interval": (
            f"{confidence:.0%} percentile interval of a paired bootstrap over validation "
            f"studies (stratified by label) and {s} seed(s), {n_resamples} resamples"
        ),
        "sources": {
            name: {
                "auroc": point[name],
                "auroc_ci": _ci(boot[name], confidence),
                "auroc_per_seed": per_seed[name],
            }
            for name in names
        },
        "comparisons": comparisons,
        **({"note": note} if note else {}),
    }
