"""Per-slice labels (a CSV keyed by study id and SOPInstanceUID or slice index) -> labels
of each slice of a volume, and of each slice window (max over its slices).

The paper's RSNA-PE protocol labels 32-slice windows from ``pe_present_on_image``: a window
is positive when one of its slices is. `CTDataset(slice_windows=..., slice_labels=...)`
builds on these helpers.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .volume import CTVolume

__all__ = [
    "SLICE_LABEL_KEYS",
    "SliceLabels",
    "read_slice_labels",
    "resample_slice_labels",
    "slice_record",
    "window_spec",
]

#: Columns of a slice-label CSV that are keys, never labels: the study ``id`` (the manifest's
#: ``id``), and one of ``sop_uid`` (SOPInstanceUID, matched with ``meta["sop_uids"]`` of the
#: volume) or ``slice`` (index along D in array order, 0 = most inferior).
SLICE_LABEL_KEYS = ("id", "sop_uid", "slice")


@dataclass
class SliceLabels:
    """Per-slice labels read by `read_slice_labels`.

    Attributes:
        source: the CSV they came from (for messages).
        label_columns: names of the label columns, in order.
        by_sop: ``{study id: {SOPInstanceUID: labels}}``.
        by_slice: ``{study id: {slice index: labels}}``.
    """

    source: str
    label_columns: list[str]
    by_sop: dict[str, dict[str, tuple[float, ...]]] = field(default_factory=dict)
    by_slice: dict[str, dict[int, tuple[float, ...]]] = field(default_factory=dict)

    def studies(self) -> set[str]:
        return set(self.by_sop) | set(self.by_slice)

    def for_volume(
        self, study: str, *, depth: int, sop_uids: Sequence[str] | None = None,
        acquired_sop_uids: Sequence[str] | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Labels ``(depth, num_labels)`` float32 of one study's slices, in array order.

        Args:
            study: the manifest id of the study.
            depth: slices of the volume as read (before any resampling).
            sop_uids: ``meta["sop_uids"]`` of the volume (needed for ``sop_uid`` rows).
            acquired_sop_uids: every SOPInstanceUID the reader saw (``meta
                ["acquired_sop_uids"]`` when it regularised the slices), to tell a label
                row of a slice that exists from one of another series.

        Raises:
            ValueError: no rows for the study; a slice with no row; a row naming a slice the
                volume does not have; ``sop_uid`` rows without ``sop_uids``.
        """
        name = f"{self.source}: study {study!r}"
        if study in self.by_sop:
            table = self.by_sop[study]
            if sop_uids is None:
                raise ValueError(
                    f"{name} is labelled by sop_uid, but its volume has no meta['sop_uids'] "
                    "(the SOPInstanceUID of each slice: DICOM series read by ct3dzoo have it, "
                    "other formats do not). Label its slices by index in a 'slice' column."
                )
            if len(sop_uids) != depth:
                raise ValueError(f"{name}: {len(sop_uids)} sop_uids for {depth} slices")
            known = set(acquired_sop_uids if acquired_sop_uids is not None else sop_uids)
            unknown = sorted(set(table) - known)
            if unknown:
                raise ValueError(
                    f"{name}: {len(unknown)} labelled SOPInstanceUID(s) are not slices of its "
                    f"volume (e.g. {unknown[0]}); the manifest row points at another series, "
                    "or the labels belong to another study. Check path/series_uid and id."
                )
            missing = [i for i, u in enumerate(sop_uids) if u not in table]
            rows = [table.get(u) for u in sop_uids]
            what = "SOPInstanceUID"
        elif study in self.by_slice:
            table_i = self.by_slice[study]
            bad = sorted(i for i in table_i if not 0 <= i < depth)
            if bad:
                raise ValueError(
                    f"{name}: slice index {bad[0]} is outside its volume of {depth} slices "
                    "(slice = index along D in array order, 0 .. D-1)."
                )
            missing = [i for i in range(depth) if i not in table_i]
            rows = [table_i.get(i) for i in range(depth)]
            what = "slice"
        else:
            raise ValueError(
                f"{name} has no rows; every study of the manifest needs its slices labelled "
                "(0 rows for negative slices too)."
            )
        if missing:
            raise ValueError(
                f"{name}: {len(missing)} of its {depth} slices have no label row (first: slice "
                f"{missing[0]}); add a row per {what} (0 for negative slices), so no slice is "
                "silently negative."
            )
        return np.asarray(rows, dtype=np.float32).reshape(depth, len(self.label_columns))


def read_slice_labels(
    path: str | os.PathLike, label_columns: Sequence[str] | None = None
) -> SliceLabels:
    """Read a slice-label CSV: ``id``, ``sop_uid`` or ``slice``, and label columns.

    Every column but `SLICE_LABEL_KEYS` (or those in ``label_columns``) is a label (numbers;
    0/1 for binary). A study is labelled either by ``sop_uid`` or by ``slice``, not both.
    """
    src = str(path)
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        cols = [c.strip() for c in next(reader, [])]
        if "id" not in cols or not ({"sop_uid", "slice"} & set(cols)):
            raise ValueError(
                f"{src}: a slice-label CSV needs an 'id' column (the manifest's study id) and "
                f"a 'sop_uid' (SOPInstanceUID) or 'slice' (index in array order) column; got "
                f"{cols}"
            )
        if label_columns is None:
            label_columns = [c for c in cols if c not in SLICE_LABEL_KEYS]
        else:
            label_columns = list(label_columns)
            absent = [c for c in label_columns if c not in cols or c in SLICE_LABEL_KEYS]
            if absent:
                raise ValueError(f"{src}: label column(s) {absent} are not label columns of {cols}")
        if not label_columns:
            raise ValueError(f"{src}: no label column besides {list(SLICE_LABEL_KEYS)}")
        out = SliceLabels(src, list(label_columns))
        i_id = cols.index("id")
        i_sop = cols.index("sop_uid") if "sop_uid" in cols else None
        i_slice = cols.index("slice") if "slice" in cols else None
        i_lab = [cols.index(c) for c in label_columns]
        width = len(cols)
        for line, r in enumerate(reader, start=2):  # streamed: RSNA has 1.8 M rows
            if len(r) != width:
                if not any(v.strip() for v in r):
                    continue  # a blank line
                raise ValueError(f"{src} line {line}: {len(r)} cells for {width} columns")
            study = r[i_id].strip()
            sop = r[i_sop].strip() if i_sop is not None else ""
            idx = r[i_slice].strip() if i_slice is not None else ""
            if not study or bool(sop) == bool(idx):
                raise ValueError(
                    f"{src} line {line}: needs an id and exactly one of sop_uid / slice; got {r}"
                )
            try:
                labels = tuple(float(r[j]) for j in i_lab)
                key: Any = sop if sop else int(idx)
            except ValueError as e:
                raise ValueError(f"{src} line {line}: bad label or slice index ({e})") from e
            if not all(math.isfinite(v) for v in labels):
                raise ValueError(f"{src} line {line}: labels must be finite numbers; got {labels}")
            mine, other = (out.by_sop, out.by_slice) if sop else (out.by_slice, out.by_sop)
            if study in other:
                raise ValueError(
                    f"{src} line {line}: study {study!r} is labelled both by sop_uid and by "
                    "slice; use one."
                )
            table: dict[Any, tuple[float, ...]] = mine.setdefault(study, {})  # type: ignore[assignment]
            if table.setdefault(key, labels) != labels:
                raise ValueError(
                    f"{src} line {line}: {key} of study {study!r} has two different label rows"
                )
    return out


def resample_slice_labels(labels: np.ndarray, depth: int) -> np.ndarray:
    """Slice labels ``(D_in, L)`` -> ``(depth, L)`` on a grid resampled along D.

    Output slice ``i`` covers source slices ``[i * s, (i + 1) * s)`` with ``s = D_in / depth``
    (voxel edges aligned, as `resample` does); its label is the max over the source slices
    it overlaps, so a positive slice is never lost by resampling.
    """
    d_in = labels.shape[0]
    if depth == d_in:
        return labels
    s = d_in / depth
    out = np.empty((depth, *labels.shape[1:]), dtype=labels.dtype)
    for i in range(depth):
        a = min(math.floor(i * s + 1e-9), d_in - 1)
        b = max(math.ceil((i + 1) * s - 1e-9), a + 1)
        out[i] = labels[a:b].max(axis=0)
    return out


def window_spec(spec: Any) -> tuple[int, int] | None:
    """``slice_windows=`` checked: ``(num_slices, stride)``, two integers >= 1, or None."""
    if spec is None:
        return None
    try:
        n, stride = (int(v) for v in spec)
        ok = n >= 1 and stride >= 1 and (n, stride) == tuple(spec)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"slice_windows must be (num_slices, stride), two integers >= 1 (paper: (32, 24)); "
            f"got {spec!r}"
        )
    return n, stride


def slice_record(volume: CTVolume) -> dict[str, Any]:
    """What per-slice labels need of a volume as read: its depth and SOPInstanceUIDs."""

    def strings(v: Any) -> list[str] | None:
        return None if v is None else [str(u) for u in v]

    return {
        "source_depth": int(volume.hu.shape[0]),
        "sop_uids": strings(volume.meta.get("sop_uids")),
        "acquired_sop_uids": strings(volume.meta.get("acquired_sop_uids")),
    }
