"""`CTDataset`: a manifest of CT volumes + labels -> model-ready tensors, with a disk cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._io.atomic import atomic_write_bytes, atomic_write_text
from ..errors import MissingFilesError
from ._dataset_pipeline import check_given_options, dataset_pipeline
from .cache import failed_studies, jsonable_meta, read_options, study_dir
from .geometry import resample, slice_window_bounds
from .io import read_volume
from .manifest import RESERVED_COLUMNS, read_manifest
from .pipeline import Preprocessing
from .slices import read_slice_labels, resample_slice_labels, slice_record, window_spec
from .volume import CTVolume
from .windows import WindowSpec

__all__ = ["RESERVED_COLUMNS", "CTDataset", "read_manifest"]  # the manifest names re-exported

#: Part of the disk-cache key: bumped when what a cache entry holds changes.
_CACHE_VERSION = 2


class CTDataset(Dataset):
    """CT volumes from a manifest, windowed to [0, 1]; optionally cut into slice windows.

    Per item: read HU (`read_volume`; a manifest ``series_uid`` is passed to the reader),
    optionally resample (``spacing``/``shape``), and cache as ``.npy`` under ``cache_dir``
    (memory-mapped on later reads, so epochs after the first never decode DICOM); with
    ``slice_windows``, take the item's slices; then ``transform`` on the HU tensor
    ``(1, D, H, W)``; then the ``windows`` (``None`` = leave to the transform).

    Args:
        manifest: CSV path or list of ``(path, label, ...)`` tuples / dicts (`read_manifest`;
            reserved columns, never labels: `RESERVED_COLUMNS`).
        transform: callable on the float32 HU tensor ``(1, D, H, W)`` (e.g. a
            `transforms.Compose`; fills in HU).
        windows: preset, ``(centre, width)``, or a list of them (one channel each).
        cache_dir: folder for the preprocessed-volume cache (created if missing).
        spacing, shape: resample to this spacing (mm) or shape before caching.
        label_columns: which CSV columns are labels (default: all but `RESERVED_COLUMNS`);
            with ``slice_labels``, columns of that CSV.
        reader: ``reader(path)`` -> `CTVolume` (called as ``reader(path, series_uid=...)``
            for rows with a ``series_uid``).
        prepared: a folder filled by `prepare` (``ct3dzoo prepare``) for this manifest:
            items are read from its int16 HU arrays, memory-mapped, nothing is decoded;
            ``spacing``/``shape``/``cache_dir`` must then be left unset.
        mask_column: a manifest column holding a 0/1 mask file per row (for segmentation):
            read with `read_volume`, resampled with the volume (``spacing``/``shape``,
            nearest neighbour), it becomes the item's ``"label"``, float32 ``(1, D, H, W)``
            on the image's grid. A random ``transform`` would move the image but not the
            mask, so ``transform`` (and ``prepared``) cannot be combined with it.
        preprocessing: a :class:`~ct3dzoo.data.Preprocessing` to build the dataset from
            (e.g. a finetuned model's ``model.preprocessing``): its reader options,
            resampling, transforms and intensity mapping; then ``transform``, ``windows``,
            ``spacing`` and ``shape`` stay unset.
        augment: train-only random transforms on the HU tensor ``(1, D, H, W)``, applied
            after the resampling and before the pipeline's deterministic transforms; never
            part of ``dataset.preprocessing`` (the evaluation pipeline).
        in_memory: keep each volume in RAM once read and resampled (before ``transform``,
            so random transforms stay random): later epochs skip the reader and the disk
            cache. Per process: DataLoader workers each fill their own copy (use
            ``num_workers=0`` or persistent workers); for data that fit in memory.
        slice_windows: ``(num_slices, stride)`` (paper: ``(32, 24)``): each item is one
            window of a study, with `predict_study`'s ranges and padding (a short study is
            one window, padded with 0 after ``windows``). A window reads only its slices
            from a memory-mapped ``prepared``/``cache_dir`` array (the raw reader decodes
            the whole study per item: pass one of them, or ``in_memory``). Transforms must
            keep D. The slice counts come from ``prepared`` metadata or one first read.
        slice_labels: CSV of per-slice labels (`read_slice_labels`: ``id``, ``sop_uid`` or
            ``slice``, label columns; needs ``slice_windows``): a window's label is the
            max over its slices. ``sop_uid`` rows match the volume's ``meta["sop_uids"]``;
            ``slice`` rows are indices in array order as read, mapped through any
            resampling along D (`resample_slice_labels`). Manifest label columns are then
            ignored; without ``slice_labels`` each window carries its study's labels.

    Raises:
        MissingFilesError: manifest rows whose file/folder does not exist (all listed),
            or, with ``prepared``, studies absent from the cache (with their errors).
        ValueError: bad manifest (`read_manifest`) or slice-label CSV, or options that
            cannot go together.

    ``dataset.preprocessing``: the evaluation pipeline of these options (random transforms
    dropped, ``RandomCrop`` as ``CenterCrop``), saved beside the model by ``finetune``.

    Items: ``{"image": float32 (C, D, H, W) in [0, 1], "label": float32 (num_labels,)
    (the mask (1, D, H, W) with ``mask_column``), "id": str, "group": str}`` (``group`` =
    study key, defaults to ``id``). With ``slice_windows``: ``"id"`` is
    ``"<study id>[start:stop]"``, ``"group"`` the study id, and ``"slices"`` the
    ``(start, stop)`` range (stop exclusive) in the study's array.
    """

    def __init__(
        self,
        manifest: str | os.PathLike | Sequence[Sequence[Any] | Mapping[str, Any]],
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        windows: Sequence[WindowSpec] | WindowSpec | None = "pe",
        cache_dir: str | os.PathLike | None = None,
        spacing: Sequence[float] | float | None = None,
        shape: Sequence[int] | None = None,
        label_columns: Sequence[str] | None = None,
        reader: Callable[..., CTVolume] = read_volume,
        prepared: str | os.PathLike | None = None,
        mask_column: str | None = None,
        in_memory: bool = False,
        preprocessing: Preprocessing | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        slice_windows: tuple[int, int] | None = None,
        slice_labels: str | os.PathLike | None = None,
    ) -> None:
        if mask_column is not None and (transform is not None or prepared is not None):
            raise ValueError(
                "mask_column= reads masks on the source grid and moves them with spacing=/"
                "shape= only: a transform= or prepared= volume would no longer align with "
                "its mask. Resample with spacing=/shape= instead, or build (image, mask) "
                "pairs yourself and transform both alike"
            )
        self.slice_windows = window_spec(slice_windows)
        if self.slice_windows is not None and mask_column is not None:
            raise ValueError("slice_windows= cuts images, not masks: leave mask_column= unset")
        if slice_labels is not None and self.slice_windows is None:
            raise ValueError(
                "slice_labels= labels slice windows; pass slice_windows=(num_slices, stride) "
                "too (paper: (32, 24))"
            )
        self.slice_labels = None if slice_labels is None else read_slice_labels(
            slice_labels, label_columns
        )  # fmt: skip
        self.mask_column = mask_column
        self.studies, self.label_columns = read_manifest(
            manifest, [] if self.slice_labels else label_columns, mask_column=mask_column
        )
        if preprocessing is not None:
            check_given_options(preprocessing, transform=transform, spacing=spacing, shape=shape,
                                windows=windows, prepared=prepared)  # fmt: skip
        if self.slice_labels is not None:
            self.label_columns = self.slice_labels.label_columns
            labelled = self.slice_labels.studies()
            unlabelled = [r["id"] for r in self.studies if r["id"] not in labelled]
            if unlabelled:
                raise ValueError(
                    f"{len(unlabelled)} manifest study(ies) have no rows in {slice_labels} "
                    f"(e.g. {unlabelled[:3]}); its 'id' column must hold the manifest's ids."
                )
        self.transform, self.windows = transform, windows
        self.augment = augment
        self.prepared = Path(prepared) if prepared is not None else None
        if self.prepared is not None:
            if spacing is not None or shape is not None or cache_dir is not None:
                raise ValueError(
                    "prepared= holds volumes already resampled by `prepare`; leave spacing=, "
                    "shape= and cache_dir= unset (pass them to prepare instead)."
                )
            self._check_prepared()
        elif reader is read_volume:
            paths = [r[k] for r in self.studies for k in ("path", "mask") if k in r]
            missing = [str(p) for p in paths if not p.exists()]
            if missing:
                raise MissingFilesError(
                    f"{len(missing)} manifest path(s) do not exist:\n  " + "\n  ".join(missing),
                    missing,
                )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.spacing, self.shape, self.reader = spacing, shape, reader
        if preprocessing is not None:
            self.spacing, self.shape = preprocessing.spacing, preprocessing.shape
            self.windows = None
        self.preprocessing = preprocessing or self._pipeline(reader)
        self._own_pipeline = preprocessing is not None
        self.in_memory = bool(in_memory)
        self._held: dict[int, tuple[np.ndarray, tuple[float, ...], dict[str, Any]]] = {}
        # one record per item: the studies, or (built on first use) their slice windows
        self._records = None if self.slice_windows is not None else self.studies

    @property
    def records(self) -> list[dict[str, Any]]:
        """One record per item: ``{"path", "labels", "id", "group"}`` (`read_manifest`), and
        with ``slice_windows`` also ``"slices"`` and ``"study_index"`` (into `studies`)."""
        if self._records is None:
            self._records = self._window_records()
        return self._records

    def __len__(self) -> int:
        return len(self.records)

    def _pipeline(self, reader: Callable[..., CTVolume]) -> Preprocessing:
        """The evaluation pipeline of this dataset's keyword options."""
        return dataset_pipeline(
            transform=self.transform, windows=self.windows, spacing=self.spacing,
            shape=self.shape, reader=reader, label_names=self.label_columns,
            prepared=read_options(self.prepared) if self.prepared is not None else None,
            slice_windows=self.slice_windows,
        )  # fmt: skip

    @property
    def num_labels(self) -> int:
        return len(self.label_columns)

    def _window_records(self) -> list[dict[str, Any]]:
        assert self.slice_windows is not None
        num_slices, stride = self.slice_windows
        out = []
        for s, study in enumerate(self.studies):
            depth, labels = self._slice_table(s)
            for a, b in slice_window_bounds(depth, num_slices, stride, "shift"):
                lab = study["labels"] if labels is None else labels[a:b].max(axis=0).tolist()
                out.append({**study, "labels": lab, "id": f"{study['id']}[{a}:{b}]",
                            "group": study["id"], "slices": (a, b), "study_index": s})  # fmt: skip
        return out

    def _slice_table(self, s: int) -> tuple[int, np.ndarray | None]:
        """Depth of study ``s`` as served, and its per-slice labels on that grid."""
        if self.prepared is not None:  # metadata only
            info = self._prepared_info(self.studies[s])
            depth = info["depth"]
        else:  # a first read (it fills cache_dir / in_memory)
            hu, _, info = self._fetch(s)
            depth = int(hu.shape[0])
        if self.slice_labels is None:
            return depth, None
        sid = self.studies[s]["id"]
        if self.prepared is not None and sid in self.slice_labels.by_sop and not info["sop_uids"]:
            raise ValueError(
                f"{self.prepared}: study {sid!r} is labelled by sop_uid, but the prepared cache "
                "does not record meta['sop_uids'] (a source without them, or an older ct3dzoo): "
                "prepare it again, read the series with cache_dir=, or label by 'slice'."
            )
        source_depth = info.get("source_depth")
        if source_depth is None:  # resampled by prepare: 'slice' rows list every slice as read
            source_depth = max(self.slice_labels.by_slice[sid]) + 1
        labels = self.slice_labels.for_volume(
            sid, depth=source_depth, sop_uids=info.get("sop_uids"),
            acquired_sop_uids=info.get("acquired_sop_uids"),
        )  # fmt: skip
        return depth, resample_slice_labels(labels, depth)

    def _key(self, path: Path, series_uid: str | None) -> str:
        st = path.stat()
        ident = json.dumps(
            [str(path.resolve()), series_uid, st.st_mtime_ns, st.st_size, self.spacing,
             self.shape, _CACHE_VERSION],
            default=list,
        )  # fmt: skip
        return hashlib.sha1(ident.encode()).hexdigest()[:20]

    def _check_prepared(self) -> None:
        assert self.prepared is not None
        self._prepare_opts = read_options(self.prepared)
        if self._prepare_opts is None:
            raise FileNotFoundError(
                f"{self.prepared} is not a prepared folder (no prepare.json); run "
                "`ct3dzoo prepare MANIFEST --out DIR` first."
            )
        absent = [r for r in self.studies if not (study_dir(self.prepared, r) / "hu.npy").is_file()]
        if absent:
            errors = failed_studies(self.prepared)
            lines = []
            for r in absent:
                err = errors.get(study_dir(self.prepared, r).name)
                lines.append(
                    f"{r['id']} ({r['path']}): " + (err["error"] if err else "not prepared yet")
                )
            raise MissingFilesError(
                f"{len(absent)} study(ies) of the manifest are not in {self.prepared}:\n  "
                + "\n  ".join(lines),
                [str(r["path"]) for r in absent],
            )

    def _prepared_info(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Spacing, depth and slice record of a prepared study, from its ``meta.json``."""
        assert self.prepared is not None
        info = json.loads((study_dir(self.prepared, rec) / "meta.json").read_text())
        meta = info.get("meta", {})
        sop_uids = meta.get("sop_uids")
        native = (
            self._prepare_opts.get("spacing") is None and self._prepare_opts.get("size") is None
        )
        return {
            "spacing": tuple(info["spacing"]),
            "depth": int(info["shape"][0]),
            "source_depth": int(info["shape"][0]) if native else (
                len(sop_uids) if sop_uids is not None else None
            ),
            "sop_uids": sop_uids,
            "acquired_sop_uids": meta.get("acquired_sop_uids"),
        }  # fmt: skip

    def _read(self, rec: dict[str, Any]) -> tuple[CTVolume, dict[str, Any]]:
        """Read (and resample) one study; its slice record as read, before resampling."""
        kw = self.preprocessing.reader_kwargs() if self._own_pipeline else {}
        if rec.get("series_uid") is not None:
            kw["series_uid"] = rec["series_uid"]
        vol = self.reader(rec["path"], **kw)
        info = slice_record(vol)
        if self._own_pipeline:
            vol = self.preprocessing.resample_volume(vol)
        elif self.spacing is not None or self.shape is not None:
            vol = resample(vol, spacing=self.spacing, shape=self.shape)
        return vol, info

    def _load(self, rec: dict[str, Any]) -> tuple[np.ndarray, tuple[float, ...], dict[str, Any]]:
        if self.cache_dir is None:
            v, info = self._read(rec)
            return v.hu, v.spacing, info
        key = self._key(rec["path"], rec.get("series_uid"))
        npy, side = self.cache_dir / f"{key}.npy", self.cache_dir / f"{key}.json"
        if npy.exists() and side.exists():
            cached = json.loads(side.read_text())
            return np.load(npy, mmap_mode="r"), tuple(cached["spacing"]), cached["slices"]
        v, info = self._read(rec)
        buf = io.BytesIO()
        np.save(buf, v.hu)
        atomic_write_bytes(npy, buf.getvalue())
        cached = {"spacing": list(v.spacing), "source": str(rec["path"]),
                  "meta": jsonable_meta(v.meta), "slices": info}  # fmt: skip
        atomic_write_text(side, json.dumps(cached))
        return v.hu, v.spacing, info

    def _fetch(self, s: int) -> tuple[np.ndarray, tuple[float, ...], dict[str, Any]]:
        """Study ``s``: HU ``(D, H, W)`` (memory-mapped when cached or prepared), spacing,
        slice record."""
        if s in self._held:
            return self._held[s]
        rec = self.studies[s]
        if self.prepared is not None:
            info = self._prepared_info(rec)
            hu = np.load(study_dir(self.prepared, rec) / "hu.npy", mmap_mode="r")
            out = hu, info["spacing"], info
        else:
            out = self._load(rec)
        if self.in_memory:
            self._held[s] = (np.array(out[0]), out[1], out[2])  # a copy: no open memory map
        return out

    def load_hu(self, index: int) -> tuple[np.ndarray, tuple[float, ...]]:
        """HU array ``(D, H, W)`` of item ``index`` (memory-mapped when cached or prepared;
        with ``slice_windows`` a view of the window's slices, unpadded) and its spacing."""
        rec = self.records[index]
        hu, spacing, _ = self._fetch(rec.get("study_index", index))
        if "slices" in rec:
            a, b = rec["slices"]
            hu = hu[a:b]
        return hu, spacing

    def load_mask(self, index: int) -> torch.Tensor:
        """The mask of item ``index``: float32 ``(1, D, H, W)`` of 0/1, on the grid of the
        item's image (needs ``mask_column``)."""
        if self.mask_column is None:
            raise ValueError("this CTDataset has no masks: pass mask_column= (a manifest column)")
        vol = self.reader(self.records[index]["mask"])
        if self.spacing is not None or self.shape is not None:
            vol = resample(vol, spacing=self.spacing, shape=self.shape, mode="nearest")
        return torch.from_numpy(np.asarray(vol.hu, dtype=np.float32) > 0.5).float()[None]

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        hu, _ = self.load_hu(index)  # read + resample (cached); a window reads its slices only
        pp = self.preprocessing
        x = pp.hu_tensor(hu)
        if self.augment is not None:
            x = self.augment(x)
        x = self.transform(x) if self.transform is not None else pp.apply_transforms(x)
        if self.windows is not None or self._own_pipeline:
            if x.shape[0] != 1:
                raise ValueError(
                    f"windows= needs one HU channel after the transform, got {x.shape[0]}; "
                    "pass windows=None when the transform windows itself."
                )
            x = pp.to_input(x)
        if self.slice_windows is not None and x.shape[1] < self.slice_windows[0]:
            x = F.pad(x, (0, 0, 0, 0, 0, self.slice_windows[0] - x.shape[1]), value=0.0)
        label = torch.tensor(rec["labels"], dtype=torch.float32)
        if self.mask_column is not None:
            label = self.load_mask(index)
            if label.shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"{rec['mask']}: mask shape {tuple(label.shape[1:])} differs from the image "
                    f"shape {tuple(x.shape[1:])} of {rec['path']}; masks must be on the "
                    "volume's grid"
                )
        item = {"image": x.float().contiguous(), "label": label, "id": rec["id"],
                "group": rec["group"]}  # fmt: skip
        if "slices" in rec:
            item["slices"] = rec["slices"]
        return item
