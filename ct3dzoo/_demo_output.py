"""What ``ct3dzoo demo`` shows while and after it runs: a line per epoch, its montage, its size."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["EpochLines", "ci_note", "folder_bytes", "write_montage", "write_saliency"]


def ci_note(ci: Any, n: int) -> str:
    """``" (95% CI 0.937-0.999, bootstrap over 64 held-out cases)"`` for a ``[low, high]``
    interval from ``finetune``'s record; the case count alone when there is none."""
    if ci is None or any(v is None or math.isnan(v) for v in ci):  # undefined: one class
        return f" ({n} held-out cases)"
    return f" (95% CI {ci[0]:.3f}-{ci[1]:.3f}, bootstrap over {n} held-out cases)"


class EpochLines:
    """Print one line per finished epoch while ``finetune`` runs, from the ``log.jsonl`` it
    rewrites after each epoch (loss, validation AUROC, wall seconds since training began)."""

    def __init__(
        self, log: Path, epochs: int, t0: float, say: Callable[[str], None] | None
    ) -> None:
        self.log, self.epochs, self.t0, self.say = log, epochs, t0, say
        self.shown = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> EpochLines:
        self.log.unlink(missing_ok=True)  # a previous run's log is not this run's progress
        if self.say is not None:
            self.say("epoch  train_loss  val_loss  val_auroc  seconds")
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.say is not None:
            self.stop.set()
            self.thread.join()
            self._show()

    def _watch(self) -> None:
        while not self.stop.wait(0.2):
            self._show()

    def _show(self) -> None:
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines[self.shown :]:
            h = json.loads(line)
            self.say(  # type: ignore[misc]
                f"{int(h['epoch']):>2}/{self.epochs:<2}  {h['train_loss']:>10.4f}  "
                f"{h['val_loss']:>8.4f}  {h['val_auroc']:>9.3f}  "
                f"{time.perf_counter() - self.t0:>7.1f}"
            )
        self.shown = max(self.shown, len(lines))


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_montage(
    out: Path, val: Any, window: str | tuple[float, float], say: Callable[[str], None]
) -> Path | None:
    """Montage of the first positive validation case, read from its DICOM series."""
    from ct3dzoo.data import read_volume

    try:
        from ct3dzoo.viz import montage
    except ImportError:  # pragma: no cover - viz is a module of ours; matplotlib is checked below
        return None
    records = val.records
    i = next((j for j, r in enumerate(records) if r["labels"][0] == 1), 0)
    cases = json.loads((out / "data" / "val" / "cases.json").read_text())
    finding = cases[i]["finding"]
    vol = read_volume(records[i]["path"])
    title = f"{records[i]['id']} (label {int(records[i]['labels'][0])}"
    if finding:
        title += f"; nodule r={finding['radius_mm']:.0f} mm at slice {finding['centre'][0]:.0f}"
    path = out / "montage.png"
    try:
        montage(
            vol, window=window, path=path, num_slices=min(16, vol.hu.shape[0]), title=title + ")"
        )
    except ImportError as e:
        say(f"montage: skipped ({e})")
        return None
    return path


def _lesion_mask(out: Path, val: Any, i: int) -> Any:
    """Case ``i``'s lesion mask on the model's grid: the same resampling and crop as its image."""
    import torch

    from ct3dzoo.data import read_volume, resample

    cases = json.loads((out / "data" / "val" / "cases.json").read_text())
    if not cases[i].get("mask"):
        return None
    vol = read_volume(out / "data" / "val" / cases[i]["mask"])
    if val.shape is not None:
        vol = resample(vol, shape=val.shape, mode="nearest")
    mask = torch.from_numpy(vol.hu.astype("float32") > 0.5).float()[None]
    return (val.transform(mask) if val.transform is not None else mask)[0]


def write_saliency(
    out: Path, model: Any, val: Any, window: str | tuple[float, float], say: Callable[[str], None]
) -> Path | None:
    """Saliency (:func:`ct3dzoo.explain.saliency`, its default method) of the finetuned model
    on the first positive validation case, as an overlay montage of every slice with the
    lesion outlined (needs the ``[explain]`` and ``[viz]`` extras; skipped with a message
    otherwise)."""
    import torch

    try:
        from ct3dzoo.explain import resolve_saliency, saliency
        from ct3dzoo.viz import saliency_montage

        records = val.records
        i = next((j for j, r in enumerate(records) if r["labels"][0] == 1), 0)
        x = val[i]["image"][None]  # (1, 1, D, H, W), exactly what the model validated on
        model.eval()
        sal = saliency(model, x)[0]
        with torch.no_grad():
            prob = float(torch.sigmoid(model(x)).item())
        path = out / "saliency.png"
        saliency_montage(
            x[0, 0], sal, path=path, num_slices=x.shape[2], contour=_lesion_mask(out, val, i),
            title=f"{records[i]['id']} (label 1), p = {prob:.2f}, window {window!r}\n"
            f"{resolve_saliency(model, x.shape[2:]).title}; white: lesion mask",
        )  # fmt: skip
    except ImportError as e:
        say(f"saliency: skipped ({e})")
        return None
    return path
