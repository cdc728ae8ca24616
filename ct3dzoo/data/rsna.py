"""The RSNA-STR Pulmonary Embolism (Kaggle) layout -> a study manifest + slice labels.

The competition ships ``train.csv`` (one row per image) and the images as
``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. `rsna_pe_manifests`
turns that into the two CSVs `CTDataset(manifest, slice_windows=(32, 24),
slice_labels=...)` reads for the paper's protocol.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from .._io.atomic import atomic_write_text

__all__ = ["RSNA_PE_STUDY_LABELS", "rsna_pe_manifests"]

#: Study-level label columns of the Kaggle ``train.csv`` (repeated on every image row).
RSNA_PE_STUDY_LABELS = (
    "negative_exam_for_pe",
    "indeterminate",
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
    "leftsided_pe",
    "chronic_pe",
    "rightsided_pe",
    "acute_and_chronic_pe",
    "central_pe",
)
_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image")


def rsna_pe_manifests(
    train_csv: str | os.PathLike,
    image_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    study_labels: Sequence[str] = ("pe_present",),
    max_studies: int | None = None,
    check_files: bool = True,
) -> tuple[Path, Path]:
    """Write ``out_dir/manifest.csv`` and ``out_dir/slice_labels.csv`` from the RSNA PE layout.

    ``manifest.csv``: one row per series: ``id`` (the StudyInstanceUID; ``<study>_<series>``
    when a study has several series), ``path`` (absolute, ``<image_root>/<study>/<series>``),
    ``series_uid``, ``group`` (the StudyInstanceUID) and the ``study_labels``:
    ``pe_present`` (1 when any image of the series has ``pe_present_on_image`` = 1; the
    paper's study label) and/or any of `RSNA_PE_STUDY_LABELS` as given in ``train.csv``.
    ``slice_labels.csv``: ``id``, ``sop_uid``, ``pe_present_on_image`` for every image.
    Both are written atomically; rows are sorted by study (and SOP) UID.

    Args:
        train_csv: the competition's ``train.csv``.
        image_root: the folder holding ``<study>/<series>/<sop>.dcm`` (Kaggle: ``train/``).
        out_dir: where the two CSVs go (created if missing).
        study_labels: manifest label columns, in order.
        max_studies: keep the first N studies (by StudyInstanceUID), e.g. for a quick run.
        check_files: require every series folder to exist under ``image_root``.

    Returns:
        ``(manifest path, slice-label path)``.

    Raises:
        ValueError: missing columns, a value that is not 0/1, a study label that differs
            between the images of one series, an unknown ``study_labels`` name.
        FileNotFoundError: with ``check_files``, series folders absent (count and examples).
    """
    known = ("pe_present", *RSNA_PE_STUDY_LABELS)
    unknown = [c for c in study_labels if c not in known]
    if unknown or not study_labels:
        raise ValueError(f"study_labels must be a non-empty list of {known}; got {study_labels}")
    wanted = [c for c in study_labels if c != "pe_present"]
    series: dict[tuple[str, str], dict[str, int]] = {}  # (study, series) -> {sop: label}
    # (study, series) -> (study labels, first line, their cells)
    study_vals: dict[tuple[str, str], tuple[list[int], int, list[str]]] = {}
    with open(train_csv, newline="") as fh:
        reader = csv.reader(fh)
        cols = [c.strip() for c in next(reader, [])]
        absent = [c for c in (*_KEYS, *wanted) if c not in cols]
        if absent:
            raise ValueError(
                f"{train_csv}: missing column(s) {absent}; expected the RSNA-STR PE train.csv "
                f"({', '.join(_KEYS)}, {', '.join(RSNA_PE_STUDY_LABELS)})"
            )
        i_study, i_series, i_sop, i_pe = (cols.index(c) for c in _KEYS)
        i_wanted = [cols.index(c) for c in wanted]
        for line, r in enumerate(reader, start=2):  # streamed: 1.8 M rows on Kaggle
            if len(r) != len(cols):
                raise ValueError(f"{train_csv} line {line}: {len(r)} cells for {len(cols)} columns")
            key = (r[i_study].strip(), r[i_series].strip())
            sop = r[i_sop].strip()
            if not all(key) or not sop:
                raise ValueError(f"{train_csv} line {line}: blank Study/Series/SOPInstanceUID")
            series.setdefault(key, {})[sop] = _binary(r[i_pe], cols[i_pe], train_csv, line)
            raw = [r[j].strip() for j in i_wanted]
            first = study_vals.get(key)
            if first is None:
                vals = [_binary(v, c, train_csv, line) for v, c in zip(raw, wanted)]
                study_vals[key] = (vals, line, raw)
            elif first[2] != raw:
                raise ValueError(
                    f"{train_csv} line {line}: study labels {dict(zip(wanted, raw))} differ "
                    f"from line {first[1]} of the same series {key[1]}; study labels must be "
                    "equal on every image of a series."
                )
    if not series:
        raise ValueError(f"{train_csv} has no image rows")
    studies = sorted({s for s, _ in series})
    if max_studies is not None:
        studies = studies[: max(int(max_studies), 0)]
    keep = set(studies)
    keys = sorted(k for k in series if k[0] in keep)
    per_study: dict[str, int] = {}
    for s, _ in keys:
        per_study[s] = per_study.get(s, 0) + 1
    root = Path(image_root).resolve()
    if check_files:
        missing = [root / s / se for s, se in keys if not (root / s / se).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(keys)} series folders are not under {root} (e.g. "
                f"{missing[0]}); image_root must be the folder holding <StudyInstanceUID>/"
                "<SeriesInstanceUID>/*.dcm (Kaggle: train/), or pass check_files=False."
            )
    man, lab = io.StringIO(), io.StringIO()
    mw, lw = csv.writer(man, lineterminator="\n"), csv.writer(lab, lineterminator="\n")
    mw.writerow(["id", "path", "series_uid", "group", *study_labels])
    lw.writerow(["id", "sop_uid", "pe_present_on_image"])
    for s, se in keys:
        sops = series[(s, se)]
        rid = s if per_study[s] == 1 else f"{s}_{se}"
        given = dict(zip(wanted, study_vals[(s, se)][0]))
        given["pe_present"] = max(sops.values())
        mw.writerow([rid, str(root / s / se), se, s, *(given[c] for c in study_labels)])
        for sop in sorted(sops):
            lw.writerow([rid, sop, sops[sop]])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "manifest.csv", man.getvalue())
    atomic_write_text(out / "slice_labels.csv", lab.getvalue())
    return out / "manifest.csv", out / "slice_labels.csv"


def _binary(cell: str, col: str, src: str | os.PathLike, line: int) -> int:
    v = cell.strip()
    if v not in ("0", "1"):
        raise ValueError(f"{src} line {line}: {col} must be 0 or 1; got {v!r}")
    return int(v)
