"""Bootstrap confidence intervals over studies: stratified resamples as count rows, weighted
AUROC/AUPRC vectorised over resamples, percentile intervals, and :func:`study_metrics` (what
``ct3dzoo predict`` writes to ``<out stem>.metrics.json``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .config import Task
from .metrics import classification_metrics, single_class_columns

__all__ = [
    "bootstrap_ci",
    "bootstrap_counts",
    "few_studies_note",
    "study_metrics",
    "weighted_auroc",
    "weighted_average_precision",
]


# ---------------------------------------------------------------------------------------
# Confidence intervals: percentile intervals of a stratified bootstrap over studies.
# A resample is a row of counts (how often each study is drawn), so one draw serves every
# label, AUROC and AUPRC alike, and both models of a paired comparison (train/compare.py).

#: elements of one ``(resamples, rows)`` weight block (bounds memory for many windows)
_BLOCK = 1 << 21


def bootstrap_counts(strata: np.ndarray, *, n_resamples: int, seed: int) -> np.ndarray:
    """Stratified bootstrap resamples as counts ``(n_resamples, N)`` for ``N`` items whose
    stratum (e.g. the label) is ``strata`` ``(N,)``: every resample draws, within each
    stratum, as many items as it holds, with replacement, so the class counts (and both
    classes) are kept. Seeded by ``seed`` alone (the global RNGs are not touched), and the
    same for any naming of the same strata."""
    strata = np.asarray(strata)
    if strata.ndim != 1:
        raise ValueError(f"strata must be one value per item (N,), got shape {strata.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}: use at least 1 (1000 or more for a CI)")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, strata.size), dtype=np.int64)
    values, first = np.unique(strata, return_index=True)
    for value in values[np.argsort(first)]:  # the draw depends on the partition only
        idx = np.flatnonzero(strata == value)
        p = np.full(idx.size, 1.0 / idx.size)
        counts[:, idx] = rng.multinomial(idx.size, p, size=n_resamples)
    return counts


def _weighted_inputs(
    scores: np.ndarray, targets: np.ndarray, weights: np.ndarray, *, descending: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(targets) > 0.5
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if s.ndim != 1 or y.shape != s.shape or w.shape[1:] != s.shape:
        raise ValueError(
            f"scores {s.shape}, targets {y.shape} and weights {w.shape} must be (N,), (N,) "
            "and (B, N)"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or inf: check the model outputs before the metrics")
    order = np.argsort(-s if descending else s, kind="stable")
    s, y, w = s[order], y[order], w[:, order]
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    return y, w, np.flatnonzero(new), np.cumsum(new) - 1  # ..., tie-group starts, group


def weighted_auroc(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` ``(N,)`` against binary ``targets`` ``(N,)`` under item weights
    ``(B, N)`` (bootstrap counts), as ``(B,)``: the weighted Mann-Whitney statistic, a tie
    counting 1/2. NaN where a class has zero weight. Unit weights give torchmetrics'
    ``binary_auroc``."""
    y, w, start, group = _weighted_inputs(scores, targets, weights, descending=False)
    pos, neg = np.where(y, w, 0.0), np.where(y, 0.0, w)
    cum = np.zeros((w.shape[0], w.shape[1] + 1))
    np.cumsum(neg, axis=1, out=cum[:, 1:])
    stop = np.append(start[1:], y.size)
    below = cum[:, start[group]]  # negative weight under each item's score
    equal = cum[:, stop[group]] - below  # ... at the same score
    u = (pos * (below + 0.5 * equal)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / (pos.sum(axis=1) * neg.sum(axis=1))


def weighted_average_precision(
    scores: np.ndarray, targets: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Average precision (AUPRC) as :func:`weighted_auroc` computes AUROC: the sum over
    score thresholds of recall gained times precision, tied scores forming one threshold.
    NaN where the positives have zero weight. Unit weights give torchmetrics'
    ``binary_average_precision``."""
    y, w, start, _ = _weighted_inputs(scores, targets, weights, descending=True)
    last = np.append(start[1:], y.size) - 1
    tp = np.cumsum(np.where(y, w, 0.0), axis=1)[:, last]
    seen = np.cumsum(w, axis=1)[:, last]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(seen > 0, tp / seen, 0.0)
        return (np.diff(tp, axis=1, prepend=0.0) * precision).sum(axis=1) / tp[:, -1]


#: fewer positive (or negative) studies than this make bootstrap intervals unreliable
MIN_STUDIES_PER_CLASS = 10


def few_studies_note(n_positive: int, n_negative: int) -> str | None:
    """Why an interval from so few studies should not be trusted, or None."""
    if min(n_positive, n_negative) >= MIN_STUDIES_PER_CLASS:
        return None
    return (
        f"only {n_positive} positive and {n_negative} negative studies: bootstrap intervals "
        f"and p-values are unreliable below {MIN_STUDIES_PER_CLASS} of each (a perfect "
        "separation, for one, gives a zero-width interval); validate on more studies"
    )


def _percentile_interval(values: np.ndarray, confidence: float) -> list[float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [math.nan, math.nan]
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(lo), float(hi)]


def _resampled(
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    scores: np.ndarray,
    targets: np.ndarray,
    counts: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """``fn`` under each resample, item weights = their study's count, in memory blocks."""
    step = max(1, _BLOCK // max(rows.size, 1))
    parts = [
        fn(scores, targets, counts[i : i + step][:, rows]) for i in range(0, counts.shape[0], step)
    ]
    return np.concatenate(parts)


def bootstrap_ci(
    probs: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    *,
    groups: Sequence[str] | None = None,
    label_names: Sequence[str] | None = None,
    prefix: str = "",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile intervals ``[low, high]`` of AUROC and AUPRC from a stratified bootstrap
    over studies, keyed like :func:`classification_metrics` plus ``_ci``
    (``{prefix}auroc_ci``, and ``{prefix}auroc_ci/<label>`` for several labels).

    ``probs`` and ``targets`` are ``(N, L)`` as there. With ``groups`` (a study key per row,
    e.g. a study's windows) whole studies are resampled, a study's label being the max of its
    rows; otherwise every row is a study. A label's interval resamples its positive and
    negative studies separately (every resample has both classes); the mean over several
    labels resamples within each combination of labels. ``[nan, nan]`` where undefined.
    """
    p = np.asarray(torch.as_tensor(probs).detach().cpu().double())
    t = np.asarray(torch.as_tensor(targets).detach().cpu()) > 0.5
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"probs {p.shape} and targets {t.shape} must both be (N, L)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: use a fraction in (0, 1), e.g. 0.95")
    num_labels = p.shape[1]
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} labels")
    if groups is None:
        rows = np.arange(p.shape[0])
    else:
        if len(groups) != p.shape[0]:
            raise ValueError(f"{len(groups)} group keys for {p.shape[0]} rows")
        index: dict[str, int] = {}
        rows = np.array([index.setdefault(g, len(index)) for g in groups], dtype=np.int64)
    study = np.zeros((int(rows.max(initial=-1)) + 1, num_labels), dtype=bool)
    np.logical_or.at(study, rows, t)
    defined = [j for j in range(num_labels) if study[:, j].any() and not study[:, j].all()]

    def draw(strata: np.ndarray) -> np.ndarray:
        return bootstrap_counts(strata, n_resamples=n_resamples, seed=seed)

    fns = {"auroc": weighted_auroc, "auprc": weighted_average_precision}
    out: dict[str, list[float]] = {}
    for j in range(num_labels):
        counts = draw(study[:, j].astype(np.int64)) if j in defined else None
        for name, fn in fns.items():
            ci = [math.nan, math.nan]
            if counts is not None:
                values = _resampled(fn, p[:, j], t[:, j], counts, rows)
                ci = _percentile_interval(values, confidence)
            out[f"{prefix}{name}_ci" + (f"/{names[j]}" if num_labels > 1 else "")] = ci
    if num_labels > 1:
        _, combo = np.unique(study, axis=0, return_inverse=True)
        counts = draw(combo.reshape(-1))
        for name, fn in fns.items():
            if not defined:
                out[f"{prefix}{name}_ci"] = [math.nan, math.nan]
                continue
            per = [_resampled(fn, p[:, j], t[:, j], counts, rows) for j in defined]
            out[f"{prefix}{name}_ci"] = _percentile_interval(np.mean(per, axis=0), confidence)
    return out


def _finite_or_none(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def study_metrics(
    probs: torch.Tensor | np.ndarray | Sequence[float],
    labels: torch.Tensor | np.ndarray | Sequence[float],
    *,
    label_names: Sequence[str] | None = None,
    task: Task = "binary",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """AUROC and AUPRC of per-study scores with their bootstrap intervals, as a JSON-ready
    dict (what ``ct3dzoo predict`` writes to ``<out stem>.metrics.json``).

    ``probs``: ``(N,)`` or ``(N, K)`` scores, one row per study (probabilities in [0, 1]);
    ``labels``: the same shape, binary, or for ``task="multiclass"`` class indices ``(N,)``
    (or one-hot). Returns ``{"n_studies", "auroc", "auroc_ci": [low, high], "auprc",
    "auprc_ci", "interval", ...}`` (``n_positive`` for binary, and ``note`` when a class has
    fewer than 10 studies; ``per_label: {name: {...}}`` and the macro means when K > 1). Intervals as :func:`bootstrap_ci`. A label with one
    class only has ``None`` values; raises ``ValueError`` when no label has both classes.
    """
    if task not in ("binary", "multilabel", "multiclass"):
        raise ValueError(f"task={task!r}: use 'binary', 'multilabel' or 'multiclass'")
    p = torch.as_tensor(probs).detach().cpu().double()
    y = torch.as_tensor(labels).detach().cpu()
    p = p.reshape(-1, 1) if p.dim() == 1 else p
    if p.dim() != 2 or (task == "binary" and p.shape[1] != 1):
        raise ValueError(
            f"task={task!r} takes {'(N,) scores' if task == 'binary' else '(N, K) scores'}, "
            f"got shape {tuple(p.shape)}; pass task='multilabel' or 'multiclass' for K outputs"
        )
    n, k = p.shape
    if task == "multiclass" and y.dim() == 1:
        integral = not y.is_floating_point() or torch.equal(y, y.round())
        if not integral or bool((y < 0).any() | (y >= k).any()):
            raise ValueError(f"multiclass labels must be class indices 0..{k - 1}")
        y = torch.nn.functional.one_hot(y.long(), k)
    y = y.reshape(-1, 1) if y.dim() == 1 else y
    if tuple(y.shape) != (n, k):
        raise ValueError(f"{tuple(y.shape)} labels for {tuple(p.shape)} scores: one per score")
    if not torch.isfinite(p).all():
        raise ValueError("probs hold NaN or inf: score every study before the metrics")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be 0 or 1 (or class indices for task='multiclass')")
    y = y.double()
    names = list(label_names) if label_names is not None else [str(i) for i in range(k)]
    undefined = single_class_columns(y)
    if len(undefined) == k:
        raise ValueError(
            f"AUROC/AUPRC need positive and negative studies, but every label of the {n} "
            "studies holds one class only: add studies of the other class"
        )
    point = classification_metrics(p, y, label_names=names)
    ci = bootstrap_ci(
        p, y, label_names=names, n_resamples=n_resamples, confidence=confidence, seed=seed
    )

    def entry(suffix: str) -> dict[str, Any]:
        e: dict[str, Any] = {}
        for m in ("auroc", "auprc"):
            e[m] = _finite_or_none(point[f"{m}{suffix}"])
            e[f"{m}_ci"] = [_finite_or_none(v) for v in ci[f"{m}_ci{suffix}"]]
        return e

    out: dict[str, Any] = {"n_studies": n, "task": task}
    if k == 1:
        out["n_positive"] = int(y.sum())
        note = few_studies_note(out["n_positive"], n - out["n_positive"])
        if note:
            out["note"] = note
    out.update(entry(""))
    out["interval"] = (
        f"{confidence:.0%} percentile interval, stratified bootstrap over studies, "
        f"{n_resamples} resamples, seed {seed}"
    )
    if k > 1:
        out["per_label"] = {
            name: {"n_positive": int(y[:, j].sum()), **entry(f"/{name}")}
            for j, name in enumerate(names)
        }
    return out
